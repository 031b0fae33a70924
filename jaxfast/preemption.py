"""Preemption: SIGTERM (what TPU VMs, SLURM and Kubernetes send before they stop a job)
asks the training loop to save a checkpoint at the next step boundary and stop cleanly.

The handler only records the request; the loop reads it between steps (`StopRequest`),
saves, and raises `Preempted`, which `experiment.run` turns into a message and exit 0.
Rerunning the same command resumes exactly from that checkpoint.
"""

from __future__ import annotations

import contextlib
import signal
import threading

from jaxfast.errors import JaxfastError


class Preempted(JaxfastError):
    """Training stopped on a stop signal after saving a checkpoint (rerun to resume)."""


class StopRequest:
    """Whether a stop signal arrived (set by the signal handler, read by the loop)."""

    def __init__(self):
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else ""


@contextlib.contextmanager
def stop_requests(signals: tuple[int, ...] = (signal.SIGTERM,)):
    """Within the block, the given signals set the yielded StopRequest instead of killing the
    process; the previous handlers come back after it. Outside the main thread (where Python
    cannot install handlers) the request is never set."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handle(signum, _frame):
        request.signal = signum

    previous = {s: signal.signal(s, handle) for s in signals}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
