"""Per-test database isolation: how what a test wrote is undone.

    rollback  (default) the test runs inside an outer transaction that is rolled
              back afterwards. A session joins it with SQLAlchemy 2's
              join_transaction_mode="create_savepoint", so the application's
              commit() and rollback() only release or roll back a SAVEPOINT.
              Well under a millisecond a test.
    truncate  the test's commits are real (for code that opens its own
              connections); afterwards every table is truncated and the rows
              that were there before (migrations', seed's) are copied back.
    clone     the test gets a fresh database cloned from the migrated and seeded
              template, dropped afterwards.

Chosen per test or module with ``@pytest.mark.envkit(isolation="truncate")``.
The context managers here are what the pytest fixtures use; they work without
pytest too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session

ISOLATIONS = ("rollback", "truncate", "clone")
DEFAULT = "rollback"


def choose(value: object, where: str) -> str:
    """Validate an isolation given in a marker."""
    if value not in ISOLATIONS:
        raise ConfigError(f"{where}: isolation must be one of {', '.join(ISOLATIONS)}, found {value!r}")
    return str(value)


def opened_engine(url: str) -> Engine:
    """A SQLAlchemy engine without a pool whose first connection is opened now, for a test that comes later.

    Every ``connect()`` gets a new connection, closed on release (as with ``NullPool``), except the first:
    that one was opened here, and SQLAlchemy's first-connect queries ran on it. The clone pool
    (:mod:`envkit.clones`) calls this in the background for each database it prepares: over TCP, a new
    connection costs a backend start and a SCRAM exchange, and the first one on an engine a few queries
    more, 10-20 ms on a busy machine, as much as the clone itself. ``dispose()`` closes it if it was never used.
    """
    from sqlalchemy import create_engine

    engine = create_engine(url, poolclass=_first_kept_pool())
    engine.pool._keep_next = True  # type: ignore[attr-defined]
    engine.connect().close()  # rolled back on return, as any released connection is, then kept
    return engine


@functools.cache
def _first_kept_pool() -> type:
    from sqlalchemy.pool import ConnectionPoolEntry, NullPool

    class FirstKept(NullPool):
        """NullPool that keeps the first connection given back, for the next checkout (see opened_engine)."""

        _keep_next = False
        _kept: ConnectionPoolEntry | None = None

        def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
            if self._keep_next:
                self._keep_next, self._kept = False, record
            else:
                record.close()

        def _do_get(self) -> ConnectionPoolEntry:
            kept, self._kept = self._kept, None
            return kept if kept is not None else self._create_connection()

        def dispose(self) -> None:
            kept, self._kept = self._kept, None
            if kept is not None:
                kept.close()

    return FirstKept


@contextlib.contextmanager
def rollback_connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside an outer transaction that is always rolled back."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            if outer.is_active:
                outer.rollback()


def rollback_session(connection: Connection, **options: Any) -> Session:
    """A session on a :func:`rollback_connection` whose commit() only releases a SAVEPOINT."""
    from sqlalchemy.orm import Session

    return Session(bind=connection, join_transaction_mode="create_savepoint", **options)


@contextlib.asynccontextmanager
async def async_rollback_session(engine: AsyncEngine, **options: Any) -> AsyncIterator[AsyncSession]:
    """The asyncio counterpart: an AsyncSession in an outer transaction that is rolled back."""
    from sqlalchemy.ext.asyncio import AsyncSession

    async with engine.connect() as conn:
        outer = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint", **options)
        try:
            yield session
        finally:
            await session.close()
            if outer.is_active:
                await outer.rollback()
