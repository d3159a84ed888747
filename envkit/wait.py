"""The one polling loop.

A check is a small function that returns a truthy value when the service is
ready, returns a falsy value or raises when it is not yet, and raises
:class:`~envkit.errors.ServiceFailed` when it never will (the process died,
the container was OOM-killed): that ends the wait at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import ReadyTimeout, ServiceFailed

log = logging.getLogger("envkit")
T = TypeVar("T")


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
    while True:
        attempts += 1
        try:
            result = check()
        except (ServiceFailed, TypeError, NameError, AttributeError):
            raise  # the service is gone for good, or envkit has a bug: waiting will not help
        except Exception as exc:  # noqa: BLE001 - any error means "not ready yet"
            last_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        else:
            if result:
                log.debug("%s: %s after %.3f s (%d attempts)", service, what, time.monotonic() - start, attempts)
                return result
            last_error = "check returned no result"
        now = time.monotonic()
        if now >= deadline:
            raise ReadyTimeout(
                f"{service}: {what} did not succeed within {timeout:g} s ({attempts} attempts); "
                f"last error: {last_error}. Check the log below, or raise the timeout (--timeout, ENVKIT_TIMEOUT)",
                service,
                logs() if logs else "",
            )
        time.sleep(min(interval, max(deadline - now, 0)))
        interval = min(interval * 1.5, max_interval)
