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
