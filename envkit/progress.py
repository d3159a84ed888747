"""Per-service progress while services start: backends note it, the CLI shows it.

A backend calls :func:`note` (``note("postgres", "restoring snapshot")``);
the lifecycle routes notes to its reporter as ``(stage, "progress", seconds,
"service: what")`` events while the start stage runs, and the CLI shows them
live on a terminal. Outside a lifecycle a note goes nowhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_listener: ContextVar[Callable[[str, str], None] | None] = ContextVar("envkit_progress", default=None)


def note(service: str, status: str) -> None:
    """Say what ``service`` is doing now."""
    listener = _listener.get()
    if listener is not None:
        listener(service, status)


@contextmanager
def listening(listener: Callable[[str, str], None]) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
