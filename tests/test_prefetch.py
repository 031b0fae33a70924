"""The background batch prefetcher: same items in order, errors surface, early stop ends the thread."""

import contextlib
import threading
import time

import pytest

from jaxfast.data.prefetch import prefetch


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "jaxfast-prefetch"]


def test_yields_put_of_every_item_in_order():
    assert list(prefetch(range(50), lambda x: x * 10, size=3)) == [x * 10 for x in range(50)]


def test_empty_source():
    assert list(prefetch([], lambda x: x)) == []


def test_source_error_is_raised_at_its_item():
    def source():
        yield 1
        yield 2
        raise OSError("corrupt file batch_3.jpg")

    got = []
    with pytest.raises(OSError, match="batch_3.jpg"):
        for item in prefetch(source(), lambda x: x):
            got.append(item)
    assert got == [1, 2]


def test_put_error_is_raised():
    def put(x):
        if x == 3:
            raise ValueError("bad shape (3,)")
        return x

    with pytest.raises(ValueError, match=r"bad shape \(3,\)"):
        list(prefetch(range(10), put))


def test_runs_ahead_of_the_consumer():
    made = []

    def put(x):
        made.append(x)
        return x

    it = prefetch(range(100), put, size=2)
    assert next(it) == 0
    deadline = time.time() + 5
    while len(made) < 3 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    # item 0 consumed, `size` queued, at most one more made and waiting for room
    assert 3 <= len(made) <= 4
    it.close()


def test_closing_early_stops_the_thread():
    before = len(_prefetch_threads())
    with contextlib.closing(prefetch(iter(range(10**9)), lambda x: x)) as it:
        for i in it:
            if i == 5:
                break
    assert len(_prefetch_threads()) == before


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size"):
        next(prefetch(range(3), lambda x: x, size=0))
