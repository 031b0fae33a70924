"""The Learner around the pure steps: lr_find, freezing, early stopping, NaN handling,
fine_tune, export, mixed precision, and clear errors for bad input."""

import dataclasses
import math

import jax
import numpy as np
import pytest

from jaxfast.data.loader import ArrayLoader, DataBunch
from jaxfast.errors import InputError
from jaxfast.export import load_export
from jaxfast.layer_groups import LayerGroups
from jaxfast.learner import Learner, TrainConfig, TrainingDiverged
from jaxfast.models.mlp import mlp

QUIET = TrainConfig(progress=False)


def blobs(n=480, dim=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, dim))
    y = rng.integers(0, classes, size=n).astype(np.int32)
    x = (centers[y] + rng.normal(size=(n, dim))).astype(np.float32)
    return x, y


def make_data(bs=32, n=480):
    x, y = blobs(n)
    cut = int(n * 0.8)
    return DataBunch(ArrayLoader(x[:cut], y[:cut], bs, shuffle=True, drop_last=True),
                     ArrayLoader(x[cut:], y[cut:], bs))


TWO_GROUPS = LayerGroups((("first", "^Dense_0/"), ("rest", "")))


def learner(data=None, workdir=None, config=QUIET, **kw):
    return Learner(mlp((16,), 3), data or make_data(), "cross_entropy", ["accuracy", "error_rate"],
                   config=config, workdir=workdir, log=lambda s: None, **kw)


def test_fit_one_cycle_learns_and_records(tmp_path):
    learn = learner(workdir=tmp_path)
    before = learn.validate()
    learn.fit_one_cycle(3, 1e-2)
    after = learn.validate()
    assert after["loss"] < 0.5 * before["loss"]
    assert after["accuracy"] > 0.95
    assert math.isclose(after["accuracy"] + after["error_rate"], 1.0, abs_tol=1e-9)
    rec = learn.recorder
    assert len(rec.losses) == 3 * len(learn.data.train) and rec.n_epochs == 3
    # one-cycle shape: lr peaks at 30% of the steps, momentum dips there
    peak = int(np.argmax(rec.lrs))
    assert abs(peak - 0.3 * len(rec.lrs)) <= 1 and int(np.argmin(rec.moms)) == peak
    for name in ("history.csv", "losses.png", "schedule.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_lr_find_leaves_state_untouched_and_suggests(tmp_path):
    learn = learner(workdir=tmp_path)
    params = jax.tree.map(np.asarray, learn.state.params)
    result = learn.lr_find(end_lr=1e4, num_it=60)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(learn.state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert result.lrs == sorted(result.lrs) and len(result.lrs) < 60  # stopped once the loss blew up
    assert result.losses[-1] > 4 * min(result.losses)
    assert result.lr_min == pytest.approx(result.lrs[int(np.argmin(result.losses))] / 10)
    assert (tmp_path / "lr_find.png").stat().st_size > 0
    before = learn.validate()["loss"]
    learn.fit(2, result.lr_min)  # the suggestion trains
    assert learn.validate()["loss"] < 0.7 * before


def test_freeze_keeps_body_fixed_and_unfreeze_trains_it():
    learn = learner(layer_groups=TWO_GROUPS)
    start = jax.tree.map(np.asarray, learn.state.params)
    learn.freeze()
    learn.fit(1, 1e-2)
    np.testing.assert_array_equal(start["Dense_0"]["kernel"], np.asarray(learn.state.params["Dense_0"]["kernel"]))
    assert not np.array_equal(start["Dense_1"]["kernel"], np.asarray(learn.state.params["Dense_1"]["kernel"]))
    learn.unfreeze()
    learn.fit_one_cycle(1, slice(1e-4, 1e-2))
    assert not np.array_equal(start["Dense_0"]["kernel"], np.asarray(learn.state.params["Dense_0"]["kernel"]))
    with pytest.raises(ValueError, match="out of range"):
        learn.freeze_to(5)


def test_fine_tune_runs_both_phases():
    learn = learner(layer_groups=TWO_GROUPS)
    learn.fine_tune(4, base_lr=5e-2, freeze_epochs=1)
    assert learn.recorder.n_epochs == 5
    assert learn.validate()["accuracy"] > 0.9


def test_early_stopping_stops():
    config = dataclasses.replace(QUIET, early_stopping_patience=1, early_stopping_min_delta=1e9)
    learn = learner(config=config)
    learn.fit(5, 1e-3)
    assert learn.recorder.n_epochs == 2


@dataclasses.dataclass(frozen=True)
class PoisonedLoader(ArrayLoader):
    """Yields NaN inputs from epoch 1 on."""

    def batches(self, epoch=0, start=0):
        for batch in super().batches(epoch, start):
            if epoch >= 1:
                batch = dict(batch, inputs=np.full_like(batch["inputs"], np.nan))
            yield batch


def test_nan_stops_cleanly_and_keeps_last_good_checkpoint(tmp_path):
    x, y = blobs()
    data = DataBunch(PoisonedLoader(x[:384], y[:384], 32, shuffle=True, drop_last=True), ArrayLoader(x[384:], y[384:], 32))
    learn = learner(data=data, workdir=tmp_path)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1.*last good checkpoint \(step 12\)"):
        learn.fit_one_cycle(3, 1e-2)
    assert learn.checkpointer.latest_step() == 12
    # the learner holds the last good state, restored from that checkpoint
    assert int(learn.state.step) == 12
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(learn.state.params))
    assert learn.checkpointer.read_meta()["epoch"] == 1


def test_export_round_trip(tmp_path):
    learn = learner()
    learn.fit(1, 1e-2)
    x = learn.data.valid.inputs[:5]
    learn.export(tmp_path / "export", "mlp", {"hidden": [16], "n_out": 3}, {"classes": ["a", "b", "c"]})
    exported = load_export(tmp_path / "export")
    np.testing.assert_allclose(exported.predict(x), learn.predict(x), rtol=1e-6)
    assert exported.meta["classes"] == ["a", "b", "c"]
    with pytest.raises(InputError, match="not a jaxfast export"):
        load_export(tmp_path)


def test_get_preds_strips_padding():
    learn = learner(data=make_data(bs=64))
    outputs, targets, losses = learn.get_preds()
    assert outputs.shape == (96, 3) and targets.shape == (96,) and losses.shape == (96,)
    np.testing.assert_array_equal(targets, learn.data.valid.targets)


def test_mixed_precision_trains_with_fp32_master_weights():
    config = dataclasses.replace(QUIET, mixed_precision=True, clip=1.0)
    learn = learner(config=config)
    learn.fit_one_cycle(2, 1e-2)
    assert all(p.dtype == np.float32 for p in jax.tree.leaves(learn.state.params))
    assert learn.validate()["accuracy"] > 0.9


def test_bad_input_errors():
    x, y = blobs(40)
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        ArrayLoader(x, y[:30], 8)
    with pytest.raises(ValueError, match="empty"):
        ArrayLoader(x[:0], y[:0], 8)
    with pytest.raises(ValueError, match="fewer than one batch"):
        ArrayLoader(x[:4], y[:4], 8, drop_last=True)
    data = DataBunch(ArrayLoader(x, y, 8))
    with pytest.raises(ValueError, match="unknown metric 'acuracy'"):
        Learner(mlp((4,), 3), data, "cross_entropy", ["acuracy"])
    with pytest.raises(ValueError, match="unknown loss"):
        Learner(mlp((4,), 3), data, "crossentropy", [])
    wrong_targets = DataBunch(ArrayLoader(x, np.zeros((40, 2), np.int32), 8))
    with pytest.raises(ValueError, match="cross_entropy"):
        Learner(mlp((4,), 3), wrong_targets, "cross_entropy", [], log=lambda s: None, config=QUIET).fit(1)


@pytest.mark.parametrize("prefetch_batches", [0, 2])
def test_background_prefetch_and_run_ahead_change_nothing(prefetch_batches, monkeypatch):
    """The batches prepared on a thread, and steps read 1 or 4 at a time: same losses, same params."""
    import jaxfast.pending as pending_module

    runs = []
    for in_flight in (0, 4):
        monkeypatch.setattr(pending_module, "STEPS_IN_FLIGHT", in_flight)
        learn = learner(config=dataclasses.replace(QUIET, prefetch_batches=prefetch_batches))
        learn.fit(2, 1e-2)
        runs.append((np.array(learn.recorder.losses), jax.tree.leaves(learn.state.params), learn.validate()))
    (losses_a, params_a, valid_a), (losses_b, params_b, valid_b) = runs
    assert len(losses_a) == 2 * len(learn.data.train)
    np.testing.assert_array_equal(losses_a, losses_b)
    for a, b in zip(params_a, params_b):
        np.testing.assert_array_equal(a, b)
    assert valid_a == valid_b


def test_mixed_precision_keeps_batchnorm_statistics_in_float32():
    """bf16 compute: BatchNorm's batch statistics are reduced in fp32 and its running stats
    stay fp32, close to the fp32 step's (bf16 rounding only)."""
    import optax

    from jaxfast.losses import get_loss
    from jaxfast.models.simple_cnn import mnist_resnet
    from jaxfast.state import Task, create_train_state
    from jaxfast.steps import train_step

    rng = np.random.default_rng(0)
    batch = {"inputs": rng.normal(size=(16, 28, 28, 1)).astype(np.float32) * 3 + 1,
             "targets": rng.integers(0, 10, 16).astype(np.int32), "mask": np.ones(16, np.float32)}
    stats = {}
    for dtype in ("float32", "bfloat16"):
        state = create_train_state(mnist_resnet(), batch["inputs"], optax.sgd(0.1),
                                   Task(get_loss("cross_entropy"), (), dtype))
        new_state, metrics = jax.jit(train_step)(state, batch)
        stats[dtype] = jax.tree.leaves(new_state.batch_stats)
        assert all(s.dtype == np.float32 for s in stats[dtype])
        assert all(p.dtype == np.float32 for p in jax.tree.leaves(new_state.params))
        assert np.isfinite(float(metrics["loss"]["sum"]))
    for full, half in zip(stats["float32"], stats["bfloat16"]):
        np.testing.assert_allclose(half, full, rtol=0.05, atol=0.02)
