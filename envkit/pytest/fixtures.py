"""Every fixture of the plugin, ``envkit_``-named, and the short names a project's own fixtures may take over.

They ask the process's :class:`~envkit.pytest.plugin.Plugin` (``plugin.of(request)``)
for the environment, and skip (fail under ``CI=true`` or ``ENVKIT_REQUIRE=1``)
with the reason when there is none. The README lists them under "pytest fixtures".
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from .. import isolation
from ..environ import patched
from ..errors import EnvkitError
from .plugin import isolation_for, of
from .types import EnvkitDatabase, EnvkitEnv, SeededUsers

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session as OrmSession


@pytest.fixture(autouse=True)
def _envkit_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``envkit`` need the environment; truncate and clone isolation apply even without db fixtures."""
    if request.node.get_closest_marker("envkit") is None:
        return
    of(request).require()
    if isolation_for(request.node) != isolation.DEFAULT:
        request.getfixturevalue("envkit_db")


@pytest.fixture(scope="session")
def envkit_env(request: pytest.FixtureRequest) -> EnvkitEnv:
    """The environment: URLs, hosts, ports and credentials of this process's database and Redis."""
    return of(request).env()


@pytest.fixture(scope="session")
def envkit_engine(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> Iterator[Engine]:
    """A SQLAlchemy engine on this process's database."""
    from sqlalchemy import create_engine

    of(request).require("postgres")
    engine = create_engine(envkit_env.database_url)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.dispose()


def _connection_lost() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


@pytest.fixture
def envkit_db(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> Iterator[EnvkitDatabase]:
    """The database this test runs on, set up and reset according to its isolation."""
    plugin = of(request)
    space = plugin.require("postgres")
    assert space.postgres is not None
    mode = isolation_for(request.node)
    if mode == "rollback":
        yield EnvkitDatabase(mode, space.postgres, request.getfixturevalue("envkit_engine"), envkit_env.async_driver)
    elif mode == "truncate":
        from ..provision import data

        snapshot = plugin.snapshot()
        yield EnvkitDatabase(mode, space.postgres, request.getfixturevalue("envkit_engine"), envkit_env.async_driver)
        cfg = plugin.envkit_config
        assert cfg is not None
        created = plugin.database_created_by_envkit(space.postgres.database)
        for attempt in (1, 2):
            conn = plugin.restore_connection()
            try:
                data.restore(space.postgres, snapshot, created_by_envkit=created, allow_hosts=cfg.postgres.allow_hosts,
                             allow_unsafe=cfg.allow_unsafe, conn=conn)
                break
            except _connection_lost():
                if attempt == 2 or not (conn.broken or conn.closed):
                    raise  # a lock timeout and the like: the test's own doing, reported as it is
                plugin.close_restore_connection()  # the server dropped it (a test terminated backends): anew
    else:
        try:
            clone = space.clone()  # made ahead by the pool, its engine's first connection open (Workspace.prepare)
        except EnvkitError as exc:
            pytest.fail(f"envkit: {exc}", pytrace=False)
        pg = clone.postgres
        assert clone.engine is not None  # the plugin's Workspace.prepare made it (isolation.opened_engine)
        try:
            with patched({"DATABASE_URL": pg.url(), "PGDATABASE": pg.database}):
                yield EnvkitDatabase(mode, pg, clone.engine, envkit_env.async_driver)
        finally:
            space.release(clone)  # the engine disposed and the database dropped, in the background


@pytest.fixture
def envkit_db_connection(envkit_db: EnvkitDatabase) -> Iterator[Connection]:
    """A SQLAlchemy connection to the test's database; under rollback isolation, inside the outer transaction."""
    if envkit_db.isolation == "rollback":
        with isolation.rollback_connection(envkit_db.engine) as conn:
            yield conn
    else:
        with envkit_db.engine.connect() as conn:
            yield conn


@pytest.fixture
def envkit_db_session(request: pytest.FixtureRequest, envkit_db: EnvkitDatabase) -> Iterator[OrmSession]:
    """A SQLAlchemy ORM session; everything it commits is undone after the test (see isolation)."""
    if envkit_db.isolation == "rollback":
        session = isolation.rollback_session(request.getfixturevalue("envkit_db_connection"))
    else:
        from sqlalchemy.orm import Session

        session = Session(bind=envkit_db.engine)
    try:
        yield session
    finally:
        session.close()


def _async_engine(request: pytest.FixtureRequest, envkit_db: EnvkitDatabase) -> AsyncEngine:
    """An AsyncEngine on the test's database, on ``postgres.async_driver`` (asyncpg or psycopg)."""
    try:
        return of(request).async_engine(envkit_db.async_url)
    except ModuleNotFoundError as exc:
        pytest.fail(f"envkit: the async driver {envkit_db.async_driver} is not installed ({exc}): pip install asyncpg, "
                    "or set postgres.async_driver = \"psycopg\" in the envkit config", pytrace=False)


async def _async_db_session(request: pytest.FixtureRequest, envkit_db: EnvkitDatabase) -> AsyncIterator[AsyncSession]:
    """An asyncio SQLAlchemy session on ``postgres.async_driver``; undone after the test like ``db_session``."""
    engine = _async_engine(request, envkit_db)
    if envkit_db.isolation == "rollback":
        async with isolation.async_rollback_session(engine) as session:
            yield session
    else:
        from sqlalchemy.ext.asyncio import AsyncSession

        async with AsyncSession(bind=engine) as session:
            yield session


@pytest.fixture
def envkit_async_engine(request: pytest.FixtureRequest, envkit_db: EnvkitDatabase) -> AsyncEngine:
    """An AsyncEngine on the test's database (``postgres.async_driver``), for an app that takes an engine.

    Its commits are real: use it with truncate or clone isolation, or ``async_db_session`` for rollback.
    """
    return _async_engine(request, envkit_db)


try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - depends on what is installed
    @pytest.fixture
    def envkit_async_db_session() -> None:
        """An asyncio SQLAlchemy session; needs pytest-asyncio."""
        pytest.fail("async_db_session needs pytest-asyncio: pip install pytest-asyncio", pytrace=False)
else:
    try:
        envkit_async_db_session = pytest_asyncio.fixture(  # type: ignore[assignment]
            _async_db_session, name="envkit_async_db_session", loop_scope="function")
    except TypeError:  # pytest-asyncio < 0.24 has no loop_scope
        envkit_async_db_session = pytest_asyncio.fixture(_async_db_session, name="envkit_async_db_session")  # type: ignore[assignment]


@pytest.fixture
def envkit_redis_client(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> Iterator[Any]:
    """A Redis client on this process's database index (decoded strings); emptied after the test."""
    plugin = of(request)
    space = plugin.require("redis")
    plugin.redis_ready()
    client = space.redis_client()
    try:
        yield client
    finally:
        client.close()
        space.flush_redis()


@pytest.fixture(scope="session")
def envkit_seeded_users(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> SeededUsers:
    """The seeded users with their plain passwords and roles (``seeded_users["alice"]``)."""
    from ..lifecycle import read_users

    session = of(request).session
    assert session is not None
    return SeededUsers(read_users(session))


@pytest.fixture
def envkit_auth_headers(request: pytest.FixtureRequest, envkit_env: EnvkitEnv, envkit_seeded_users: SeededUsers) -> Any:
    """``auth_headers("alice")``: the headers your ``pytest_envkit_auth_headers`` hook builds for a seeded user."""

    def build(user: str | Mapping[str, Any]) -> dict[str, str]:
        found = envkit_seeded_users[user] if isinstance(user, str) else dict(user)
        headers = request.config.hook.pytest_envkit_auth_headers(user=found, env=envkit_env, request=request)
        if headers is None:
            pytest.fail("auth_headers needs a hook that makes your application's credentials: define "
                        "`def pytest_envkit_auth_headers(user, env, request): return {...}` in conftest.py, "
                        "or override the auth_headers fixture", pytrace=False)
        return dict(headers)

    return build


# -- the short names ---------------------------------------------------------------------
# A project's own fixture of the same name (conftest.py, a test module) wins over the plugin's, as pytest always
# has it; envkit's stays reachable under its envkit_ name, which envkit's fixtures themselves use.

@pytest.fixture
def db_connection(envkit_db_connection: Connection) -> Connection:
    """``envkit_db_connection``."""
    return envkit_db_connection


@pytest.fixture
def db_session(envkit_db_session: OrmSession) -> OrmSession:
    """``envkit_db_session``: a SQLAlchemy ORM session; everything it commits is undone after the test."""
    return envkit_db_session


@pytest.fixture
def async_db_session(envkit_async_db_session: AsyncSession) -> AsyncSession:
    """``envkit_async_db_session``: an asyncio SQLAlchemy session, undone after the test like ``db_session``."""
    return envkit_async_db_session


@pytest.fixture
def redis_client(envkit_redis_client: Any) -> Any:
    """``envkit_redis_client``: a Redis client on this process's database index, emptied after the test."""
    return envkit_redis_client


@pytest.fixture(scope="session")
def seeded_users(envkit_seeded_users: SeededUsers) -> SeededUsers:
    """``envkit_seeded_users``: the seeded users with their plain passwords and roles."""
    return envkit_seeded_users


@pytest.fixture
def auth_headers(envkit_auth_headers: Any) -> Any:
    """``envkit_auth_headers``: ``auth_headers("alice")`` builds a seeded user's headers with your hook."""
    return envkit_auth_headers
