"""Errors that jaxfast raises on purpose, with messages that say what to do."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
