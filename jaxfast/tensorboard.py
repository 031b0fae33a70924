"""TensorBoard event files for a run: per-step and per-epoch scalars and the run's PNG plots.

`TensorBoardWriter(workdir)` writes with tf.summary into `<workdir>/tensorboard/`
(`tensorboard --logdir <workdir>/tensorboard`). TensorFlow is imported on first use, not
by `import jaxfast.tensorboard`, and is then kept off the GPUs, which belong to JAX.

Steps are the caller's: pass the global iteration count (the number of training steps
done so far) for per-step values and for the per-epoch table alike, as fastai's
LearnerTensorboardWriter does, so every curve shares one axis. Each scalar costs about
0.4 ms of host time: `step_series` writes a Recorder's per-step lists at epoch end
instead of inside the training loop.

Resume: on opening, the writer reads the last step already logged for each tag in the
event files of the directory, and writes a tag only at a step after that one. An exact
resume replays the steps after its checkpoint with the same values, so a rerun continues
each curve where it stopped, with no duplicated points (a new event file is added to the
same directory; TensorBoard reads them all).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from jaxfast.errors import InputError

SUBDIR = "tensorboard"
EPOCH_COLUMNS_SKIPPED = ("epoch", "step", "time")


def _tensorflow():
    """TensorFlow, imported now and hidden from the GPUs (before it initialises devices)."""
    import tensorflow as tf

    try:
        import tensorboard  # noqa: F401  (tf.summary.scalar/image are implemented there)
    except ImportError:
        raise ImportError("jaxfast.tensorboard needs the tensorboard package: pip install tensorboard") from None
    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):  # devices already initialised (e.g. by tf.data): leave as is
        pass
    return tf


def event_files(logdir: str | Path) -> list[Path]:
    """The event files of `logdir`, oldest first (TF names them by creation time)."""
    return sorted(Path(logdir).glob("events.out.tfevents.*"))


def read_events(logdir: str | Path) -> list[tuple[str, int, object]]:
    """(tag, step, summary value proto) of every summary in `logdir`'s event files; a
    record cut short by a crash ends its file's reading."""
    tf = _tensorflow()
    from tensorflow.core.util import event_pb2

    out = []
    for path in event_files(logdir):
        try:
            for record in tf.data.TFRecordDataset(str(path)):
                event = event_pb2.Event.FromString(record.numpy())
                out.extend((value.tag, int(event.step), value) for value in event.summary.value)
        except tf.errors.DataLossError:
            continue
    return out


def last_steps(logdir: str | Path) -> dict[str, int]:
    """The last step logged for each tag in `logdir` ({} for a new directory)."""
    if not event_files(logdir):
        return {}
    steps: dict[str, int] = {}
    for tag, step, _ in read_events(logdir):
        steps[tag] = max(step, steps.get(tag, step))
    return steps


class TensorBoardWriter:
    """Scalars and PNG images into `<workdir>/tensorboard/`, continuing an earlier run's
    curves without duplicating steps (see the module docstring)."""

    def __init__(self, workdir: str | Path, subdir: str = SUBDIR):
        self.logdir = Path(workdir) / subdir
        self.last_steps = last_steps(self.logdir)
        self._tf = None
        self._writer = None

    def _open(self):
        if self._writer is None:
            self._tf = _tensorflow()
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = self._tf.summary.create_file_writer(str(self.logdir))
        return self._tf, self._writer

    def _is_new(self, tag: str, step: int) -> bool:
        return step > self.last_steps.get(tag, -1)

    def scalars(self, step: int, values: Mapping[str, float], prefix: str = "") -> int:
        """Write each value under the tag `prefix/name` at `step`; the number written
        (tags already logged at this or a later step are skipped)."""
        tf, writer = self._open()
        step, written = int(step), 0
        with writer.as_default():
            for name, value in values.items():
                tag = f"{prefix}/{name}" if prefix else str(name)
                if not self._is_new(tag, step):
                    continue
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    raise InputError(f"TensorBoard scalar {tag!r} at step {step}: {value!r} is not a number") from None
                tf.summary.scalar(tag, number, step=step)
                self.last_steps[tag] = step
                written += 1
        return written

    def image_png(self, tag: str, png_path: str | Path, step: int) -> bool:
        """Log the PNG file `png_path` as image `tag` at `step`; False when already logged."""
        path, step = Path(png_path), int(step)
        if not path.is_file():
            raise InputError(f"{path}: no such PNG file to log as TensorBoard image {tag!r}")
        if not self._is_new(tag, step):
            return False
        tf, writer = self._open()
        try:
            image = tf.io.decode_png(path.read_bytes())
        except tf.errors.InvalidArgumentError as err:
            raise InputError(f"{path}: not a readable PNG ({err.message})") from None
        with writer.as_default():
            tf.summary.image(tag, image[None], step=step)
        self.last_steps[tag] = step
        return True

    def step_series(self, series: Mapping[str, Sequence[float]], prefix: str = "train") -> int:
        """Per-step lists whose index i is step i + 1 (e.g. a Recorder's losses, lrs, moms):
        writes the steps not logged yet, so calling it at each epoch end keeps TensorBoard
        out of the training loop; the number of steps written."""
        n = min((len(values) for values in series.values()), default=0)
        first = min((self.last_steps.get(f"{prefix}/{name}" if prefix else name, 0) for name in series), default=0)
        for i in range(max(first, 0), n):
            self.scalars(i + 1, {name: values[i] for name, values in series.items()}, prefix)
        return max(n - max(first, 0), 0)

    def epoch(self, row: Mapping[str, float], prefix: str = "epoch") -> int:
        """One row of the epoch table (train_loss, valid_loss, metrics) at its 'step'."""
        return self.scalars(row["step"], {k: v for k, v in row.items() if k not in EPOCH_COLUMNS_SKIPPED}, prefix)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
