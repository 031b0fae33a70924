"""Errors that jaxfast raises on purpose, with messages that say what to do.

`JaxfastError` is the base of every error a user should see as one line (a missing
dataset, a diverged loss, a bad file or config): `experiment.run` prints those and exits
2. Anything else (a bug, a JAX shape error) keeps its traceback.
"""


class JaxfastError(Exception):
    """An expected failure whose message is the whole story (shown without traceback)."""


class InputError(JaxfastError, ValueError):
    """Bad user input: a file, row, key, shape or setting that cannot be used (the message names it)."""


class MissingInput(JaxfastError, FileNotFoundError):
    """A file or folder the user named (or that a layout requires) does not exist."""


class TrainingDiverged(JaxfastError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
