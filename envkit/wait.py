"""The one polling loop.

A check is a small function that returns a truthy value when the service is
ready, returns a falsy value or raises when it is not yet, and raises
:class:`~envkit.errors.ServiceFailed` when it never will (the process died,
the container was OOM-killed): that ends the wait at once. A signal
(:class:`~envkit.errors.Interrupted`) is no ``Exception``: it ends the wait too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from . import signals
from .errors import ReadyTimeout, ServiceFailed

log = logging.getLogger("envkit")
T = TypeVar("T")

#: Where :func:`wait_for` records each wait while :func:`recording` is active (for the diagnostics bundle).
_history: contextvars.ContextVar[list[dict[str, Any]] | None] = contextvars.ContextVar("envkit_wait_history", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Collect a record of every wait (service, check, attempts, errors seen, outcome) made inside the block."""
    history: list[dict[str, Any]] = []
    token = _history.set(history)
    try:
        yield history
    finally:
        _history.reset(token)


def _record(service: str, what: str, start: float, attempts: int, errors: dict[str, int], outcome: str) -> None:
    history = _history.get()
    if history is not None:
        history.append({"service": service, "check": what, "seconds": round(time.monotonic() - start, 4),
                        "attempts": attempts, "outcome": outcome,
                        "errors": [{"error": e, "count": n} for e, n in list(errors.items())[:20]]})


def wait_for(
    check: Callable[[], T],
    *,
    service: str,
    what: str,
    timeout: float,
    interval: float = 0.003,
    max_interval: float = 0.1,
    logs: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value or ``timeout`` seconds pass.

    The interval starts short (servers that are nearly up are caught within a
    few ms) and backs off towards ``max_interval``.
    """
    start = time.monotonic()
    deadline = start + timeout
    last_error: str = "no answer yet"
    attempts = 0
    errors: dict[str, int] = {}  # distinct errors seen, in order, with counts: the health-check history
    while True:
        attempts += 1
        signals.check()  # a signal that some library turned into an error of its own still ends the wait
        try:
            result = check()
        except (ServiceFailed, TypeError, NameError, AttributeError) as exc:
            _record(service, what, start, attempts, errors, "failed: " + (str(exc).splitlines() or [type(exc).__name__])[0])
            raise  # the service is gone for good, or envkit has a bug: waiting will not help
        except Exception as exc:  # noqa: BLE001 - any error means "not ready yet"
            last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        else:
            if result:
                log.debug("%s: %s after %.3f s (%d attempts)", service, what, time.monotonic() - start, attempts)
                _record(service, what, start, attempts, errors, "ready")
                return result
            last_error = "check returned no result"
        if last_error in errors or len(errors) < 50:
            errors[last_error] = errors.get(last_error, 0) + 1
        now = time.monotonic()
        if now >= deadline:
            _record(service, what, start, attempts, errors, f"timed out after {timeout:g} s")
            log_text = logs() if logs else ""
            raise ReadyTimeout(
                f"{service}: {what} did not succeed within {timeout:g} s ({attempts} attempts); "
                f"last error: {last_error}. " + ("Check the log below, or raise" if log_text.strip() else "Raise")
                + " the timeout (--timeout, ENVKIT_TIMEOUT) if the service is only slow",
                service,
                log_text,
            )
        time.sleep(min(interval, max(deadline - now, 0)))
        interval = min(interval * 1.5, max_interval)
