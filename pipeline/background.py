"""Helpers that let the data path use a second core without changing what it does or in which
order: reading the next batch, and writing the last unit, happen in a thread while the main thread
works on the current batch; a sample's scan works on two upstream files at once (numpy, Arrow,
Parquet and hashlib on large buffers release the GIL).

Each keeps a bounded number of things in flight, so memory grows by a few batches or units at
most, and each hands errors back where the sequential code would have raised them.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")
_END = object()


def read_ahead(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    """``items``, produced by a thread up to ``depth`` ahead of the consumer; an error in the
    producer is raised here after the items before it. Closing this generator stops the producer."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((_END, None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((_END, e))
        finally:
            close = getattr(items, "close", None)
            if close:
                close()

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():            # unblock a producer waiting to put
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        thread.join()


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 2) -> Iterator[R]:
    """``fn(item)`` for each item, ``workers`` at a time in threads, yielded in the items' order;
    at most ``workers + 1`` results wait unread. An error is raised at its item's place."""
    pending: queue.SimpleQueue[Future] = queue.SimpleQueue()
    with ThreadPoolExecutor(workers, thread_name_prefix="ordered-map") as pool:
        waiting = 0
        try:
            for item in items:
                pending.put(pool.submit(fn, item))
                waiting += 1
                if waiting > workers:
                    waiting -= 1
                    yield pending.get().result()
            while waiting:
                waiting -= 1
                yield pending.get().result()
        finally:
            while not pending.empty():
                pending.get().cancel()


class InOrder:
    """Runs calls one at a time in a thread, in the order given; a call waits for the one before
    it, so at most one is in flight. ``close`` waits for the last; a failed call's error is raised
    by the next ``submit`` or by ``close``."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="in-order")
        self.pending: Future | None = None

    def submit(self, fn: Callable, *args) -> None:
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self, quiet: bool = False) -> None:
        try:
            self.wait()
        except BaseException:
            if not quiet:
                raise
        finally:
            self.pool.shutdown()
