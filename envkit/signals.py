"""SIGINT, SIGTERM and SIGHUP: they stop envkit, and nothing may take them for an ordinary error.

The CLI installs :func:`install`. From then on a signal

- is recorded (:func:`received`): once one arrived, envkit is stopping, and
  :func:`check` raises it again wherever envkit looks (each round of the wait
  loop, after each subprocess and each stage), so a library that turned it into
  an error of its own (SQLAlchemy's rollback, a client's retry loop) cannot
  hide it;
- is raised in the main thread as :class:`~envkit.errors.Interrupted`, a
  ``KeyboardInterrupt``: no ``except Exception`` catches it, and libraries
  clean up as they do for Ctrl-C (psycopg cancels the query that runs);
- is only noted while teardown runs (:func:`deferred`), and raised when the
  outermost teardown is over, so it still decides the exit code;
- is never raised into the import system's own bookkeeping (the module locks
  that other threads wait on): there it is raised a moment later, once the
  interpreter is back in ordinary code.

A signal before :func:`install` (while the CLI's modules load) ends the
process at once with its exit code: nothing has been started yet.

Where envkit is a guest in another program's process (the pytest plugin's
``--envkit``), :func:`interrupt_on_sigterm` only makes SIGTERM unwind like
Ctrl-C; the host handles the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType

from . import _early
from .errors import Interrupted

log = logging.getLogger("envkit")

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_received: list[int] = []  # every signal since install(), in order
_deferring = 0
_postponed_at: float | None = None  # when a signal was first held back from the import system
_RETRY = 0.005  # seconds between looks while the import system holds it back
_POSTPONE_AT_MOST = 2.0  # then raise anyway: an import that never ends must not make envkit unstoppable
_IMPORT_SYSTEM = ("<frozen importlib._bootstrap>", "<frozen importlib._bootstrap_external>")


def install_early() -> None:
    """While the CLI loads or exits (nothing to tear down): a signal exits at once, with its code and one line."""
    if threading.current_thread() is threading.main_thread():
        _early.install()


def install() -> None:
    """Raise :class:`Interrupted` on SIGINT, SIGTERM and SIGHUP from now on (main thread only)."""
    global _postponed_at
    if threading.current_thread() is not threading.main_thread():
        return
    _received.clear()
    _postponed_at = None
    for sig in HANDLED:
        signal.signal(sig, _on_signal)
    signal.signal(signal.SIGALRM, _retry)


def interrupt_on_sigterm() -> Callable[[], None] | None:
    """SIGTERM (CI cancellation) raises :class:`Interrupted`, a ``KeyboardInterrupt``, so the host unwinds as for Ctrl-C.

    Only in the main thread, and only while nothing else handles SIGTERM. The signal is not recorded
    (:func:`received`): the host's own handling of the interruption ends its run, and envkit's teardown
    afterwards runs as usual. Returns what puts the earlier handler back, or None when nothing was installed.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        return None
    earlier = signal.signal(signal.SIGTERM, _interrupt)

    def put_back() -> None:
        signal.signal(signal.SIGTERM, earlier)

    return put_back


def received() -> int | None:
    """The first signal received since :func:`install`, if any: the one that decides the exit code."""
    return _received[0] if _received else None


def count() -> int:
    """How many signals arrived since :func:`install` (a second one escalates the stop of a child)."""
    return len(_received)


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived (outside teardown): the points where envkit looks."""
    if _received and not _deferring:
        raise Interrupted(_received[0])


@contextlib.contextmanager
def deferred(*, then_raise: bool = True) -> Iterator[None]:
    """Teardown is not interrupted: signals that arrive meanwhile are noted and take effect when it is over.

    When the outermost deferral ends normally and a signal has arrived, :class:`Interrupted` is raised
    (unless ``then_raise`` is false: the caller looks itself); when an exception is already on its way,
    that one goes on, and the CLI still exits with the signal's code.
    """
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if then_raise:
        check()


def foreground() -> bool:
    """Whether this process group is the foreground of its controlling terminal (a Ctrl-C there reaches it all)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    name = signal.Signals(signum).name
    if _deferring:
        log.warning("received %s during teardown; finishing teardown first", name)
        return
    if len(_received) > 1:
        log.debug("received %s while stopping on %s", name, signal.Signals(_received[0]).name)
    _raise_or_postpone(frame)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _retry(signum: int, frame: FrameType | None) -> None:
    if _received and not _deferring:
        _raise_or_postpone(frame)


def _raise_or_postpone(frame: FrameType | None) -> None:
    """Raise the interruption, unless the interpreter is inside the import system's lock handling.

    An exception raised there can leave a module lock held by nobody who will release it; the next
    thread that imports that module (a worker, or the interpreter at exit) then waits for ever.
    """
    global _postponed_at
    now = time.monotonic()
    if frame is not None and frame.f_code.co_filename in _IMPORT_SYSTEM:
        _postponed_at = _postponed_at or now
        if now - _postponed_at < _POSTPONE_AT_MOST:
            signal.setitimer(signal.ITIMER_REAL, _RETRY)
            return
    _postponed_at = None
    raise Interrupted(_received[0])
