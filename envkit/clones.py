"""Databases for ``isolation="clone"`` tests, cloned ahead of time in the background.

A clone is a ``CREATE DATABASE ... TEMPLATE`` (20-100 ms on a loaded machine:
it forces checkpoints), and dropping it afterwards is another checkpoint; the
test's first connection to it (TCP, SCRAM, SQLAlchemy's first-connect queries)
is another 10-20 ms. The
pool does both off the test's path: once the plugin knows how many clone
tests this process will run (:meth:`ClonePool.expect`), a few threads make
that many clones ahead, never more than ``size`` waiting at once; a test
takes a ready one (a pick: no copy, and its first connection is open: the
workspace's ``prepare``), and gives it back to be dropped in the background. When nothing is ready, the test waits for the clone already
under way rather than starting another (which would only slow both down).

The test goes first: work that can wait (a clone beyond the first ``LOW``
ahead, a drop) starts only once no test has taken or given back a clone for
``QUIET`` seconds, i.e. while a test's body runs rather than beside its setup
and teardown (on two cores a ``CREATE DATABASE`` and the thread preparing its
engine made both a few milliseconds slower).

Bounded: at most ``size`` clones waiting and ``size`` waiting to be dropped
(a test giving one back beyond that drops it itself). :meth:`close` stops
the threads and drops every database the pool made; their names are derived
names of the run, so the run's sweep finds what a killed process left.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import EnvkitError

T = TypeVar("T")

log = logging.getLogger("envkit")

#: Clones waiting at most, per process
SIZE = 4
#: Threads cloning at once: concurrent CREATE DATABASEs share their checkpoints (about 3x the throughput of one)
THREADS = 2
#: Clones ready or under way below which the pool makes another at once
LOW = 2
#: Seconds without a take or a give-back after which work that can wait starts
QUIET = 0.02


class ClonePool(Generic[T]):
    """Clones of one template made ahead by background threads; see the module docstring.

    ``make`` returns whatever a test needs of its clone (the workspace: the database and its engine, its
    first connection already open), ``drop`` undoes all of it.
    """

    def __init__(self, make: Callable[[], T], drop: Callable[[T], None],
                 size: int = SIZE, threads: int = THREADS) -> None:
        self._make, self._drop, self._size, self._threads = make, drop, size, threads
        self._ready: collections.deque[T] = collections.deque()
        self._used: collections.deque[T] = collections.deque()
        self._wanted = 0  # clones still to be asked for, as far as the plugin knows
        self._making = 0  # clones under way
        self._error: Exception | None = None
        self._closed = False
        self._takers = 0  # tests waiting for a clone
        self._last = 0.0  # when a test last took or gave back a clone (time.monotonic)
        self._cond = threading.Condition()
        self._workers: list[threading.Thread] = []

    def expect(self, count: int) -> None:
        """``count`` more clones will be asked for: start making them."""
        with self._cond:
            self._wanted += count
            while len(self._workers) < self._threads and self._wanted > 0 and not self._closed:
                worker = threading.Thread(target=self._work, name="envkit-clones", daemon=True)
                self._workers.append(worker)
                worker.start()
            self._cond.notify_all()

    def take(self) -> T:
        """A fresh clone: a ready one, the one under way, or (nothing expected) one made now."""
        with self._cond:
            self._wanted = max(self._wanted - 1, 0)
            self._last = time.monotonic()
            self._takers += 1
            self._cond.notify_all()
            try:
                while not self._ready and self._making and not self._closed:
                    self._cond.wait(timeout=1.0)
                if self._ready:
                    return self._ready.popleft()
            finally:
                self._takers -= 1
        return self._make()

    def give_back(self, clone: T) -> None:
        """A used clone, dropped in the background (now, when the threads are behind or gone)."""
        with self._cond:
            self._last = time.monotonic()
            if self._workers and not self._closed and len(self._used) < self._size:
                self._used.append(clone)
                self._cond.notify_all()
                return
        self._drop(clone)

    def close(self) -> None:
        """Stop the threads and drop every clone still here."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for worker in self._workers:
            worker.join(timeout=60)
        left = list(self._ready) + list(self._used)
        self._ready.clear()
        self._used.clear()
        errors = []
        for clone in left:
            try:
                self._drop(clone)
            except Exception as exc:  # noqa: BLE001 - drop the others; the run's sweep gets another go
                errors.append(f"{getattr(clone, 'database', clone)}: {exc}")
        if errors:
            raise EnvkitError(f"could not drop the prepared clones {'; '.join(errors)}")

    def _next(self) -> str | None:
        """What a thread does next (under the lock): "drop", "make", or None to stop."""
        while not self._closed:
            task, urgent = self._task()
            if task is None:
                self._cond.wait(timeout=5.0)
                continue
            left = self._last + QUIET - time.monotonic()
            if urgent or left <= 0:
                return task
            self._cond.wait(timeout=left)  # a test is being set up or torn down: after it
        return None

    def _task(self) -> tuple[str | None, bool]:
        """The task due and whether it is urgent (a test waits for it, or will soon)."""
        ahead = len(self._ready) + self._making
        if self._used and (len(self._used) >= self._size // 2 or ahead >= self._wanted):
            return "drop", len(self._used) >= self._size - 1
        if self._error is None and ahead < min(self._size, self._wanted):
            return "make", ahead < LOW or self._takers > 0
        return ("drop", False) if self._used else (None, False)

    def _work(self) -> None:
        while True:
            with self._cond:
                task = self._next()
                if task is None:
                    return
                if task == "make":
                    self._making += 1
                    used = None
                else:
                    used = self._used.popleft()
            try:
                if used is not None:
                    self._drop(used)
                else:
                    made = self._make()
                    with self._cond:
                        self._ready.append(made)
            except Exception as exc:  # noqa: BLE001 - a test that takes one then makes its own, and sees the error
                log.debug("envkit: preparing a clone failed: %s", exc)
                with self._cond:
                    self._error = exc
            finally:
                with self._cond:
                    if used is None:
                        self._making -= 1
                    self._cond.notify_all()
