"""Run a producer a bounded number of items ahead of its consumer, in one background thread.

Photo decoding (file read + ``cv2.imdecode``, both of which release the GIL) then overlaps with
inference on the previous photo. ``ahead`` bounds how many produced items exist that the consumer
has not taken yet, counting the one being produced, so memory stays bounded: with ``ahead=1`` at
most two decoded photos are alive, the consumer's and the next one.
Items arrive in the producer's order; an exception the producer raises is re-raised to the
consumer at the position where it happened, after every item produced before it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterable
from typing import TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()


def prefetch_map(
    fn: Callable[[T], R], items: Iterable[T], *, ahead: int = 1
) -> Generator[R, None, None]:
    """``map(fn, items)`` with ``fn`` run in a background thread up to ``ahead`` items early.

    Closing the iterator early (``break``, garbage collection) stops the thread after the item it
    is producing; nothing more is computed.
    """
    if ahead < 1:
        raise ValueError("ahead must be >= 1")
    slots = threading.Semaphore(ahead)
    out: queue.SimpleQueue[tuple[bool, object]] = queue.SimpleQueue()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                slots.acquire()
                if stop.is_set():
                    return
                out.put((True, fn(item)))
        except BaseException as e:  # carried to the consumer, in order
            out.put((False, e))
            return
        out.put((True, _DONE))

    worker = threading.Thread(target=produce, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = out.get()
            slots.release()
            if not ok:
                assert isinstance(value, BaseException)
                raise value
            if value is _DONE:
                return
            yield cast(R, value)  # only _DONE is not an R, and it returned above
    finally:
        stop.set()
        slots.release()  # wake a producer waiting for a slot so it can see ``stop``
        worker.join()
