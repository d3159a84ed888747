"""What a backend hands to the rest of the lifecycle, and the protocol it follows.

A backend knows *how* services run (local processes, containers, somebody
else's servers). It starts them, decides they answer, and returns endpoints;
it knows nothing of databases, migrations or users (see ``envkit.provision``).
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..config import Config
from ..services import Running
from ..state import Session


class Backend(Protocol):
    """How services run. Chosen by name from ``envkit.registry.BACKENDS``; tests/test_registry.py holds each to it."""

    name: ClassVar[str]

    def start(self, config: Config, session: Session, stack: ExitStack, snapshot: str | None) -> Running:
        """Start the services and wait until they answer.

        Register each resource's teardown on ``stack`` the moment it exists and
        record it in ``session.resources`` (then ``session.save()``) so that
        another process can tear it down. ``snapshot`` is a cache key: when the
        backend holds a migrated-and-seeded copy under it, start from it and
        return ``restored=True``.
        """
        ...

    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        """Keep the current, freshly migrated and seeded database under ``key``."""
        ...

    def teardown(self, session: Session) -> None:
        """Remove everything ``session.resources`` records; idempotent, works from any process."""
        ...

    def logs(self, session: Session, service: str | None = None) -> dict[str, str]:
        """The services' logs, by service name."""
        ...


@runtime_checkable
class SupportsDiagnostics(Protocol):
    """Optional for a backend: what it knows about its services beyond their logs, for the diagnostics bundle.

    Backends without it get their :meth:`Backend.logs` in the bundle instead.
    """

    def diagnostics(self, session: Session) -> dict[str, dict[str, Any]]:
        """Per service name: ``{"log": str, "state": {...}, "health": [...]}``, every key optional.

        ``state`` says what became of the service (running, exited and its exit
        code, OOM-killed, its port); ``health`` is its health-check history,
        oldest first. Called before teardown, so logs and containers still exist.
        """
        ...


@runtime_checkable
class SupportsPrepareNext(Protocol):
    """Optional for a backend: what its teardown prepares for the next start, made while a command runs instead.

    ``envkit test`` and ``envkit run`` call it in a thread while their command runs, and wait for it before
    teardown, which then finds it done: the work is off the path the user waits on (native: the spare copy).
    """

    def prepare_next(self, session: Session) -> None:
        """Prepare what the next start will use; safe to call again, and a no-op where nothing applies."""
        ...
