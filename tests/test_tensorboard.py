"""jaxfast.tensorboard: scalars and PNG images written with tf.summary and read back with
TensorBoard's own EventAccumulator; a rerun continues the same curves without duplicates."""

import subprocess
import sys

import numpy as np
import pytest

from jaxfast.errors import InputError
from jaxfast.tensorboard import TensorBoardWriter, last_steps

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard is not installed (pip install tensorboard): tf.summary needs it")


def accumulate(logdir):
    """TensorBoard's reader over every event file of `logdir` (scalars and images kept whole)."""
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalar_points(acc, tag) -> list[tuple[int, float]]:
    """(step, value) of a tf.summary.scalar tag (stored as a tensor summary in TF2)."""
    import tensorflow as tf

    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def write_png(path, pixels: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(path)


def test_scalars_and_image_read_back(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (12, 20, 4), dtype=np.uint8)
    write_png(tmp_path / "losses.png", pixels)
    with TensorBoardWriter(tmp_path) as tb:
        for step, (loss, lr) in enumerate([(2.5, 1e-3), (1.75, 2e-3), (1.25, 3e-3)], start=1):
            assert tb.scalars(step, {"loss": loss, "lr": lr, "mom": 0.95 - 0.01 * step}, prefix="train") == 3
        assert tb.epoch({"epoch": 0, "train_loss": 1.8, "valid_loss": 1.6, "error_rate": 0.25,
                         "time": 12.0, "step": 3}) == 3
        assert tb.image_png("plots/losses", tmp_path / "losses.png", step=3)
    acc = accumulate(tmp_path / "tensorboard")
    assert sorted(acc.Tags()["tensors"]) == sorted(
        ["train/loss", "train/lr", "train/mom", "epoch/train_loss", "epoch/valid_loss", "epoch/error_rate",
         "plots/losses"])
    assert scalar_points(acc, "train/loss") == [(1, 2.5), (2, 1.75), (3, 1.25)]
    assert [s for s, _ in scalar_points(acc, "train/lr")] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in scalar_points(acc, "train/lr")], [1e-3, 2e-3, 3e-3], rtol=1e-6)
    assert scalar_points(acc, "epoch/error_rate") == [(3, 0.25)]
    np.testing.assert_allclose(scalar_points(acc, "epoch/valid_loss")[0][1], 1.6, rtol=1e-6)
    # tf.summary.image stores [width, height, PNG...]: the PNG decodes to the original pixels
    import tensorflow as tf

    (image,) = acc.Tensors("plots/losses")
    assert image.step == 3
    width, height, encoded = tf.make_ndarray(image.tensor_proto)
    assert (int(width), int(height)) == (20, 12)
    np.testing.assert_array_equal(tf.io.decode_png(encoded).numpy(), pixels)


def test_rerun_continues_without_duplicating_steps(tmp_path):
    write_png(tmp_path / "plot.png", np.zeros((4, 4, 3), np.uint8))
    with TensorBoardWriter(tmp_path) as tb:
        for step in (1, 2, 3):
            tb.scalars(step, {"loss": 10.0 * step}, "train")
        tb.image_png("plots/schedule", tmp_path / "plot.png", 3)
    assert last_steps(tmp_path / "tensorboard") == {"train/loss": 3, "plots/schedule": 3}
    # the rerun (resumed from step 2) replays steps 2-3 and goes on to 5
    with TensorBoardWriter(tmp_path) as tb:
        written = [tb.scalars(step, {"loss": 10.0 * step + 1}, "train") for step in (2, 3, 4, 5)]
        assert written == [0, 0, 1, 1]
        assert not tb.image_png("plots/schedule", tmp_path / "plot.png", 3)
        assert tb.image_png("plots/schedule", tmp_path / "plot.png", 5)
    acc = accumulate(tmp_path / "tensorboard")
    assert scalar_points(acc, "train/loss") == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 41.0), (5, 51.0)]
    assert [e.step for e in acc.Tensors("plots/schedule")] == [3, 5]


def test_bad_input_is_named(tmp_path):
    tb = TensorBoardWriter(tmp_path)
    with pytest.raises(InputError, match="nowhere.png: no such PNG file"):
        tb.image_png("plots/x", tmp_path / "nowhere.png", 1)
    (tmp_path / "fake.png").write_text("not a png")
    with pytest.raises(InputError, match="fake.png: not a readable PNG"):
        tb.image_png("plots/x", tmp_path / "fake.png", 1)
    with pytest.raises(InputError, match="'train/loss' at step 1: 'abc' is not a number"):
        tb.scalars(1, {"loss": "abc"}, "train")
    tb.close()


def test_import_does_not_load_tensorflow():
    code = "import sys, jaxfast.tensorboard; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_event_file_cut_by_a_crash_keeps_its_whole_records(tmp_path):
    with TensorBoardWriter(tmp_path) as tb:
        for step in range(1, 6):
            tb.scalars(step, {"loss": float(step)}, "train")
    (events,) = (tmp_path / "tensorboard").iterdir()
    events.write_bytes(events.read_bytes()[:-7])  # the last record loses its tail
    assert last_steps(tmp_path / "tensorboard") == {"train/loss": 4}
    with TensorBoardWriter(tmp_path) as tb:
        assert [tb.scalars(step, {"loss": float(step)}, "train") for step in range(4, 7)] == [0, 1, 1]


def test_step_series_writes_only_the_new_steps(tmp_path):
    losses, lrs = [4.0, 3.0, 2.5, 2.0, 1.5], [0.1, 0.2, 0.3, 0.4, 0.5]
    with TensorBoardWriter(tmp_path) as tb:
        assert tb.step_series({"loss": losses[:2], "lr": lrs[:2]}) == 2
        assert tb.step_series({"loss": losses[:2], "lr": lrs[:2]}) == 0
    with TensorBoardWriter(tmp_path) as tb:  # a rerun whose recorder holds the whole history
        assert tb.step_series({"loss": losses, "lr": lrs}) == 3
    acc = accumulate(tmp_path / "tensorboard")
    assert scalar_points(acc, "train/loss") == list(enumerate(losses, start=1))
    assert [s for s, _ in scalar_points(acc, "train/lr")] == [1, 2, 3, 4, 5]
