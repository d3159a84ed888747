"""What a backend hands to the rest of the lifecycle, and the protocol it follows.

A backend knows *how* services run (local processes, containers, somebody
else's servers). It starts them, decides they answer, and returns endpoints;
it knows nothing of databases, migrations or users (see ``envkit.provision``).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote

from ..config import Config
from ..state import Session


@dataclass(frozen=True)
class PostgresEndpoint:
    """A PostgreSQL server and the credentials tests use on it."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)  # never in a repr: tracebacks end up in CI logs
    database: str
    admin_url: str = field(repr=False)  # a superuser connection (libpq URL) used to create roles and databases
    owned: bool = True  # envkit started this server: it may create and drop anything on it
    version: str = ""

    def url(self, driver: str | None = "psycopg", database: str | None = None) -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"{scheme}://{auth}@{_host(self.host)}:{self.port}/{quote(database or self.database, safe='')}"

    def libpq(self, database: str | None = None) -> str:
        return self.url(driver=None, database=database)


@dataclass(frozen=True)
class RedisEndpoint:
    """A Redis server and the database index envkit may use on it."""

    host: str
    port: int
    db: int = 0
    password: str | None = field(default=None, repr=False)
    owned: bool = True
    version: str = ""

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{_host(self.host)}:{self.port}/{self.db}"


@dataclass
class Running:
    """The services a backend started (or found), ready for provisioning."""

    backend: str
    postgres: PostgresEndpoint | None = None
    redis: RedisEndpoint | None = None
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # user-defined services: exports
    restored: bool = False  # started from a migrated-and-seeded snapshot: skip migrate and seed


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


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
