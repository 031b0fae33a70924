"""Prepare the next batches on a background thread while the device runs the current step.

Slicing numpy arrays (or pulling from tf.data) and copying to the device take ~0.1-0.3 ms
per batch, as long as a small model's whole train step; done on a thread they overlap with
an accelerator's step (XLA releases the GIL while it waits). On a CPU backend the thread
competes with XLA for the same cores, so the Learner uses it on accelerators only
(`TrainConfig.prefetch_batches`). The order of the batches is the order of the source
iterator, so resume and reproducibility are unaffected.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(source: Iterable, put: Callable[[object], T], size: int = 2) -> Iterator[T]:
    """Yield `put(item)` for each item of `source`, computed up to `size` items ahead.

    An exception raised by the source or by `put` is re-raised here, at the item where it
    happened. Closing the generator early (break, exception in the consumer) stops the
    thread after at most one more item.
    """
    if size < 1:
        raise ValueError(f"prefetch size must be >= 1, got {size}")
    items: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in source:
                if not offer(put(item)):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(_Failed(error))
            return
        offer(_DONE)

    thread = threading.Thread(target=work, name="jaxfast-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
