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
import logging
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

log = logging.getLogger("envkit")

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


#: Run on a clone's first connection ahead of its test: reading each table's (at most 100) definition and
#: planning a query on it fills the new server backend's catalog caches, a millisecond or so the test's first
#: statements would otherwise pay. Nothing is read from the tables themselves.
_WARM_CATALOG = """DO $envkit$
DECLARE r record;
BEGIN
  FOR r IN SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'v', 'm') AND n.nspname <> 'information_schema'
             AND n.nspname NOT LIKE 'pg\\_%' AND has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')
           ORDER BY c.oid LIMIT 100
  LOOP
    EXECUTE format('SELECT 1 FROM %I.%I LIMIT 0', r.nspname, r.relname);
  END LOOP;
END $envkit$"""


#: Connections a clone's engine keeps once its test gives them back (more are closed on return)
KEPT = 20


def opened_engine(url: str) -> Engine:
    """A SQLAlchemy engine whose first connection is opened now, for a test that comes later.

    The clone pool (:mod:`envkit.clones`) calls this in the background for each database it prepares: over TCP,
    a new connection costs a backend start and a SCRAM exchange, and the first one on an engine a few queries
    more, 10-20 ms on a busy machine, as much as the clone itself; its catalog caches are filled too
    (``_WARM_CATALOG``). The engine keeps what the test gives back (a pool without a size limit: a test may
    hold as many connections at once as it likes) and closes nothing itself: closing a connection makes its
    server backend exit, and on a small machine the test's thread waits a millisecond or two for that.
    ``dispose()``, in the background with the clone's drop, closes them all.
    """
    import psycopg
    from sqlalchemy import create_engine

    engine = create_engine(url, pool_size=KEPT, max_overflow=-1)
    with engine.connect() as conn:  # rolled back on return, as any released connection is, then kept
        try:
            conn.connection.driver_connection.execute(_WARM_CATALOG)  # type: ignore[union-attr]
        except psycopg.Error as exc:  # a warm-up only: the test runs all the same
            log.debug("envkit: warming a clone's catalog caches: %s", exc)
    return engine


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
