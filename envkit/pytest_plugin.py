"""envkit's pytest plugin, registered through the ``pytest11`` entry point: installing envkit is enough.

Which environment the tests use, first found wins:

1. the one ``envkit test`` or ``envkit run`` handed over (``$ENVKIT_STATE_FILE``);
2. the one ``envkit up`` left running for this checkout;
3. with ``--envkit``, one brought up for this session and torn down at its end
   (``--envkit-keep`` leaves it up, ``--envkit-backend`` picks the backend).

Without one, tests that need it (they use a fixture below, or carry the
``envkit`` marker) are skipped with the reason; with ``CI=true`` or
``ENVKIT_REQUIRE=1`` they fail instead.

Each pytest process gets a database and a Redis namespace of its own
(:mod:`envkit.workspace`), and its ``os.environ`` points at them
(``DATABASE_URL``, ``PG*``, ``REDIS_URL``, the ``[env]`` names) from
``pytest_load_initial_conftests`` on: before any conftest or test module is
imported, so settings an application builds at import see them. Under
pytest-xdist the controller finds or brings up the environment before the
workers start; they inherit its state file and run id through os.environ
(their conftests are imported before xdist hands them anything else), and it
sweeps the run's leftovers at the end. Fixtures are listed in the README under "pytest fixtures"; isolation
modes in :mod:`envkit.isolation`.

psycopg, redis and SQLAlchemy are imported only when an environment is used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from . import distribution, isolation
from .config import BACKEND_NAMES
from .errors import EnvkitError, StateError

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
    from sqlalchemy.orm import Session as OrmSession

    from .backends.base import PostgresEndpoint, RedisEndpoint
    from .config import Config as EnvkitConfig
    from .lifecycle import Environment
    from .provision.data import Snapshot
    from .state import Session
    from .workspace import Workspace

__all__ = ["EnvkitDatabase", "EnvkitEnv", "SeededUsers"]

MAIN = "main"  # the worker id of a run without xdist (envkit.workspace.MAIN, without importing it)
_PLUGIN = pytest.StashKey["_Plugin"]()
#: "<run id> <pid>" of the pytest process that owns the run: how its xdist workers learn the run id before their
#: workerinput exists (see _Plugin.__post_init__)
_RUN_VARIABLE = "ENVKIT_PYTEST_RUN"
# Environments left up by --envkit-keep: held until the interpreter exits, because collecting their
# still-running Popen objects earlier raises ResourceWarnings (errors under filterwarnings = error).
_KEPT: list[Environment] = []


# -- what the fixtures hand out ---------------------------------------------------

@dataclass(frozen=True)
class EnvkitEnv:
    """The ``envkit_env`` fixture: this test process's view of the environment."""

    name: str  # the environment's label (ENVKIT_NAME)
    backend: str
    worker: str  # "main", or the xdist worker id
    postgres: PostgresEndpoint | None  # host, port, user, password and this process's database
    template_database: str | None  # the environment's migrated and seeded database, this one's template
    redis: RedisEndpoint | None  # host, port, password and this process's database index
    redis_prefix: str  # "" unless xdist workers share one Redis index (the external backend)
    exports: Mapping[str, str] = field(repr=False)  # every exported variable, as this process's os.environ has it
    users_file: Path = Path()
    async_driver: str = "psycopg_async"  # postgres.async_driver, resolved: asyncpg or psycopg_async

    @property
    def database_url(self) -> str | None:
        """SQLAlchemy URL (psycopg 3) of this process's database."""
        return self.postgres.url() if self.postgres else None

    @property
    def async_database_url(self) -> str | None:
        """SQLAlchemy asyncio URL of this process's database, on ``postgres.async_driver``."""
        return self.postgres.url(self.async_driver) if self.postgres else None

    @property
    def redis_url(self) -> str | None:
        return self.redis.url if self.redis else None

    def redis_key(self, name: str) -> str:
        """``name`` inside this process's Redis namespace."""
        return self.redis_prefix + name


@dataclass
class EnvkitDatabase:
    """The ``envkit_db`` fixture: the database one test runs on, and how it is reset afterwards."""

    isolation: str  # rollback, truncate or clone
    postgres: PostgresEndpoint
    engine: Engine
    async_driver: str = "psycopg_async"

    @property
    def url(self) -> str:
        return self.postgres.url()

    @property
    def async_url(self) -> str:
        return self.postgres.url(self.async_driver)


class SeededUsers(list):  # type: ignore[type-arg]
    """The seeded users, as dicts with their plain ``password``; ``users["alice"]`` finds one by username or email."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for user in self:
                if key in (user.get("username"), user.get("email"), user.get("name")):
                    return user
            known = ", ".join(str(u.get("username") or u.get("email")) for u in self) or "none"
            raise KeyError(f"no seeded user {key!r} (seeded: {known})")
        return super().__getitem__(key)

    def with_role(self, role: str) -> list[dict[str, Any]]:
        return [user for user in self if user.get("role") == role]


# -- options, hooks, markers --------------------------------------------------------

class _HookSpecs:
    @pytest.hookspec(firstresult=True)
    def pytest_envkit_auth_headers(self, user: dict[str, Any], env: EnvkitEnv, request: pytest.FixtureRequest,
                                   ) -> Mapping[str, str] | None:
        """Return the HTTP headers that authenticate ``user`` in your application (``auth_headers`` uses it).

        ``user`` is a seeded user with its plain ``password`` and ``role``;
        ``request`` gives access to other fixtures (a database session, an app).
        """


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(_HookSpecs)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    group = parser.getgroup("envkit", "envkit test environments")
    group.addoption("--envkit", action="store_true",
                    help="Bring an environment up for this session when none is running (envkit test, envkit up), "
                         "and tear it down at the end.")
    group.addoption("--envkit-backend", choices=BACKEND_NAMES,
                    help="The backend of the environment --envkit brings up (implies --envkit).")
    group.addoption("--envkit-keep", action="store_true",
                    help="Leave the environment --envkit brought up running; `envkit down` ends it.")
    pluginmanager.register(_Reapply(), "envkit-reapply")


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    """Before any conftest or test module is imported: the environment, this process's database, os.environ."""
    ns = early_config.known_args_namespace
    if getattr(ns, "help", False) or getattr(ns, "version", False):
        return
    _open(early_config)


class _Reapply:
    """A plain hookimpl, so it runs after every tryfirst one (pytest-env's among them) and before conftests load.

    envkit's values win over pytest-env's for the names envkit exports,
    whichever of the two tryfirst hooks pytest happened to call first.
    """

    def pytest_load_initial_conftests(self, early_config: pytest.Config) -> None:
        plugin = early_config.stash.get(_PLUGIN, None)
        if plugin is not None:
            plugin.reapply_environ()


def _open(config: pytest.Config) -> _Plugin:
    plugin = _Plugin(config)
    config.stash[_PLUGIN] = plugin
    config.add_cleanup(plugin.finish_run)  # also when a conftest fails to import, or the run stops before it starts
    plugin.start()
    return plugin


def pytest_configure(config: pytest.Config) -> None:
    clash = distribution.other_envkit()
    if clash:
        raise pytest.UsageError(f"envkit: {distribution.clash_message(clash)}")
    config.addinivalue_line(
        "markers", "envkit(isolation='rollback'): the test needs the envkit environment; isolation is how its "
                   "database writes are undone: rollback (default), truncate (truncate and reseed) or clone (a fresh database)")
    if config.stash.get(_PLUGIN, None) is None:  # registered after the early hook ran
        _open(config)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[_PLUGIN].finish_process()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Clone-isolated tests get databases prepared ahead: say how many to expect."""
    plugin = session.config.stash.get(_PLUGIN, None)
    if plugin is not None and plugin.workspace is not None and not session.config.option.collectonly:
        wanted = sum(1 for item in session.items if _isolation_of(item) == "clone")
        plugin.workspace.expect_clones(wanted)


def pytest_report_header(config: pytest.Config) -> list[str]:
    plugin = config.stash.get(_PLUGIN, None)
    return plugin.header() if plugin else []


# -- the plugin's state, one per pytest process ----------------------------------------

@dataclass
class _Plugin:
    config: pytest.Config
    worker: str = MAIN
    run: str = ""
    envkit_config: EnvkitConfig | None = None
    session: Session | None = None
    environment: Environment | None = None  # brought up by --envkit: ours to tear down
    workspace: Workspace | None = None
    problem: tuple[str, bool] | None = None  # (message, is an error rather than a reason to skip)
    found: str = ""  # how the environment was found, for the report header
    _environ: dict[str, str | None] = field(default_factory=dict)
    _sigterm: Any = None
    _snapshot: Snapshot | None = None
    _restore_conn: Any = None
    _redis_flushed: bool = False
    _async_engines: dict[str, AsyncEngine] = field(default_factory=dict)
    _finished: bool = False

    def __post_init__(self) -> None:
        # An xdist worker imports its conftests before it is given its workerinput: what it needs that early, the
        # controller left in os.environ, which the worker inherited ($ENVKIT_PYTEST_RUN, $ENVKIT_STATE_FILE).
        # The parent pid tells a worker of this run from a pytest started inside one of its tests (which inherits
        # PYTEST_XDIST_WORKER too, and must not take that worker's database or Redis index: it is a run of its own).
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        run, _, parent = os.environ.get(_RUN_VARIABLE, "").partition(" ")
        if worker and run and parent == str(os.getppid()):
            self.worker, self.run = worker, run
        self.run = self.run or secrets.token_hex(3)

    def _option(self, name: str) -> Any:
        return getattr(self.config.known_args_namespace, name, None)

    # -- start -------------------------------------------------------------------
    def start(self) -> None:
        """Find (or bring up) the environment, clone this process's database, point os.environ at it."""
        if self.worker == MAIN:
            self._set_environ({_RUN_VARIABLE: f"{self.run} {os.getpid()}"})  # for xdist's workers, spawned later
        wanted = self.worker == MAIN and bool(self._option("envkit") or self._option("envkit_backend"))
        try:
            self.envkit_config = self._load_config()
            self.session = self._locate()
            if self.session is not None:  # the settings it was made with (`envkit -c FILE up`), not just the ones here
                from .lifecycle import made_with

                self.envkit_config = made_with(self.envkit_config, self.session)
            if self.session is None and wanted:
                self.environment = self._bring_up()
                self.session, self.found = self.environment.session, "brought up for this session"
        except Exception as exc:  # noqa: BLE001 - reported as envkit's own paragraph, never a traceback
            if wanted or isinstance(exc, StateError):
                # an environment is up (or was handed over) but cannot be used: stop before any conftest is imported,
                # or an application that reads its settings at import would run against whatever .env or the shell say
                self._stop(f"envkit: {_describe(exc)}")
            self.problem = (f"envkit: {_describe(exc)}", True)  # e.g. a config error and no environment: those tests fail
            return
        if self.session is None:
            self.problem = (self._missing(), False)
            return
        from .workspace import Workspace

        try:
            self.workspace = Workspace.open(self.envkit_config, self.session, self.run, self.worker)
        except Exception as exc:  # noqa: BLE001
            # an environment is there, this process's database is not: stop before conftests point anywhere else
            self._stop(f"envkit: cannot set up this process's database and Redis: {_describe(exc)}")
        self.workspace.prepare = _clone_engine
        self._set_environ(self.workspace.exports)

    def _stop(self, message: str) -> NoReturn:
        """No usable environment where one was asked for or is up: stop before any conftest runs against another one."""
        self._say(message)
        raise SystemExit(3)  # pytest's own cleanup runs finish_run: whatever was brought up is torn down

    def _load_config(self) -> EnvkitConfig:
        from .config import load

        backend = self._option("envkit_backend")
        return load(self.config.invocation_params.dir, overrides={"backend": backend} if backend else None,
                    environ=os.environ)

    def _locate(self) -> Session | None:
        from . import lifecycle, state

        file = os.environ.get("ENVKIT_STATE_FILE")
        if file:
            session = state.read(Path(file))
            if session is None:
                raise StateError(f"ENVKIT_STATE_FILE is {file}, which does not exist: the environment handed to "
                                  "these tests is gone. Run them again through envkit test")
            self.found = "handed over by envkit"
            return session
        assert self.envkit_config is not None
        self.found = "left up by envkit up"
        session = lifecycle.current(self.envkit_config)
        if session is not None:  # changed migrations or seeds since `envkit up`: its database is not what they say
            lifecycle.check_fresh(self.envkit_config, session)
        return session

    def _bring_up(self) -> Environment:
        from . import lifecycle

        assert self.envkit_config is not None
        self._say(f"envkit: bringing an environment up for this session ({self.envkit_config.backend} backend)")
        env = lifecycle.up(self.envkit_config)
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            # CI cancellation sends SIGTERM: unwind like Ctrl-C, so the environment is torn down
            self._sigterm = signal.signal(signal.SIGTERM, _interrupt)
        return env

    def _missing(self) -> str:
        where = self.envkit_config.state_path if self.envkit_config else Path(".envkit")
        return ("no envkit environment: run the tests with `envkit test`, run `envkit up` first, or pass --envkit "
                f"to bring one up for this session (looked for $ENVKIT_STATE_FILE and {where}/state.json)")

    # -- what tests need -------------------------------------------------------------
    def require(self, service: str | None = None) -> Workspace:
        """The workspace, or skip (fail under CI=true or ENVKIT_REQUIRE=1) with the reason there is none."""
        if self.problem is None and self.workspace is None:
            self.problem = ("envkit: no environment was set up in this process", True)
        if self.problem is not None:
            _skip_or_fail(*self.problem)
        space = self.workspace
        assert space is not None
        if service == "postgres" and space.postgres is None:
            _skip_or_fail("envkit: this environment has no PostgreSQL (postgres.enabled = false)", error=False)
        if service == "redis" and space.redis is None:
            _skip_or_fail("envkit: this environment has no Redis (redis.enabled = false, or the external backend was "
                          "given no redis.url or REDIS_URL)", error=False)
        return space

    def env(self) -> EnvkitEnv:
        space = self.require()
        assert self.session is not None
        return EnvkitEnv(
            name=self.session.label, backend=self.session.backend, worker=self.worker, postgres=space.postgres,
            template_database=space.template.database if space.template else None, redis=space.redis,
            redis_prefix=space.redis_prefix, exports=dict(space.exports), users_file=self.session.users_file,
            async_driver=self.async_driver())

    def async_driver(self) -> str:
        from .exports import async_driver

        assert self.envkit_config is not None
        return async_driver(self.envkit_config)

    def snapshot(self) -> Snapshot:
        """The rows of this process's database before any truncate-isolated test wrote: what reseeding restores."""
        from .provision import data

        if self._snapshot is None:
            space = self.require("postgres")
            assert space.postgres is not None
            self._snapshot = data.capture(space.postgres)
        return self._snapshot

    def restore_connection(self) -> Any:
        """One connection to this process's database for every truncate-and-reseed (closed before it is dropped)."""
        if self._restore_conn is None or self._restore_conn.closed:
            from .provision.database import connect

            space = self.require("postgres")
            assert space.postgres is not None
            self._restore_conn = connect(space.postgres.libpq())
        return self._restore_conn

    def close_restore_connection(self) -> None:
        conn, self._restore_conn = self._restore_conn, None
        if conn is not None:
            conn.close()

    def database_created_by_envkit(self, name: str) -> bool | None:
        """Whether envkit created ``name``; None: let the guard ask whether this process did."""
        if self.session and name in self.session.resources.get("created_databases", []):
            from .provision import database

            space = self.require("postgres")
            assert space.postgres is not None
            # the record alone proves nothing (it can be edited or stale): the mark set at creation does
            return bool(database.marked(space.postgres, name)) or None
        return None

    def redis_ready(self) -> None:
        """Empty this process's Redis namespace once before its first test uses it (a crashed run's leftovers)."""
        if not self._redis_flushed and self.workspace:
            self.workspace.flush_redis()
            self._redis_flushed = True

    def async_engine(self, url: str) -> AsyncEngine:
        """One AsyncEngine per database; NullPool, because each test may run in its own event loop."""
        if url not in self._async_engines:
            from sqlalchemy.ext.asyncio import create_async_engine
            from sqlalchemy.pool import NullPool

            self._async_engines[url] = create_async_engine(url, poolclass=NullPool)
        return self._async_engines[url]

    # -- the end -------------------------------------------------------------------------
    def finish_process(self) -> None:
        """Drop this process's database and empty its Redis namespace; put os.environ back."""
        space, self.workspace = self.workspace, None
        self.close_restore_connection()  # before the database is dropped: DROP DATABASE waits for no one
        for engine in self._async_engines.values():
            engine.sync_engine.dispose()  # NullPool: nothing pooled, nothing that needs an event loop
        self._async_engines.clear()
        try:
            if space is not None:
                space.close()
        except Exception as exc:  # noqa: BLE001 - report, and still restore the environment
            self._say(f"envkit: could not clean up this process's database or Redis namespace: {exc}")
        finally:
            self._restore_environ()

    def finish_run(self) -> None:
        """The run's owner: sweep what crashed workers left; tear down what --envkit brought up."""
        self.finish_process()  # when sessionfinish never ran (an error before the session)
        if self.worker != MAIN or self._finished:
            return
        self._finished = True
        try:
            if self.session is not None and self.envkit_config is not None:
                from .workspace import sweep

                sweep(self.envkit_config, self.session, self.run)
        except Exception as exc:  # noqa: BLE001
            self._say(f"envkit: could not drop this run's databases: {exc}")
        env, self.environment = self.environment, None
        try:
            if env is not None:
                if self._option("envkit_keep"):
                    env.detach()
                    _KEPT.append(env)
                    self._say(f"envkit: left {env.session.label} up; `envkit down` ends it")
                else:
                    env.down()
        finally:
            if self._sigterm is not None:
                signal.signal(signal.SIGTERM, self._sigterm)
                self._sigterm = None

    def header(self) -> list[str]:
        if self.session is None:
            return [self.problem[0]] if self.problem and self.problem[1] else []
        space = self.workspace
        where = f"database {space.postgres.database}" if space and space.postgres else "no database"
        return [f"envkit: {self.session.label} ({self.session.backend} backend, {self.found}); {where}"]

    # -- helpers --------------------------------------------------------------------------
    def _set_environ(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._environ.setdefault(key, os.environ.get(key))
            os.environ[key] = value

    def _restore_environ(self) -> None:
        for key, value in self._environ.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._environ.clear()

    def reapply_environ(self) -> None:
        """Put this process's values back over whatever another early hook (pytest-env) set meanwhile."""
        if self.workspace is not None:
            os.environ.update(self.workspace.exports)

    def _say(self, line: str) -> None:
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None and self.worker == MAIN:
            reporter.write_line(line)
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")  # the early hook runs under global capture
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def _describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if isinstance(exc, EnvkitError) else f"{type(exc).__name__}: {text}"


def _required() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") or os.environ.get("ENVKIT_REQUIRE") == "1"


def _skip_or_fail(message: str, error: bool) -> None:
    if error:
        pytest.fail(message, pytrace=False)
    if _required():
        pytest.fail(f"{message} (failing instead of skipping: CI or ENVKIT_REQUIRE is set)", pytrace=False)
    pytest.skip(message)


def _plugin(request: pytest.FixtureRequest) -> _Plugin:
    return request.config.stash[_PLUGIN]


def _isolation_of(node: pytest.Item) -> str | None:
    marker = node.get_closest_marker("envkit")
    return marker.kwargs.get("isolation", isolation.DEFAULT) if marker else None


def _isolation(node: pytest.Item) -> str:
    marker = node.get_closest_marker("envkit")
    value = marker.kwargs.get("isolation", isolation.DEFAULT) if marker else isolation.DEFAULT
    try:
        return isolation.choose(value, f"@pytest.mark.envkit on {node.nodeid}")
    except EnvkitError as exc:
        pytest.fail(str(exc), pytrace=False)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _envkit_marker(request: pytest.FixtureRequest) -> None:
    """Tests marked ``envkit`` need the environment; truncate and clone isolation apply even without db fixtures."""
    if request.node.get_closest_marker("envkit") is None:
        return
    _plugin(request).require()
    if _isolation(request.node) != isolation.DEFAULT:
        request.getfixturevalue("envkit_db")


@pytest.fixture(scope="session")
def envkit_env(request: pytest.FixtureRequest) -> EnvkitEnv:
    """The environment: URLs, hosts, ports and credentials of this process's database and Redis."""
    return _plugin(request).env()


@pytest.fixture(scope="session")
def envkit_engine(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> Iterator[Engine]:
    """A SQLAlchemy engine on this process's database."""
    from sqlalchemy import create_engine

    _plugin(request).require("postgres")
    engine = create_engine(envkit_env.database_url)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        engine.dispose()


def _clone_engine(pg: PostgresEndpoint) -> Engine:
    """A clone test's engine, made with its clone in the pool's threads: its first connection already open."""
    return isolation.opened_engine(pg.url())


def _connection_lost() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


@pytest.fixture
def envkit_db(request: pytest.FixtureRequest, envkit_env: EnvkitEnv) -> Iterator[EnvkitDatabase]:
    """The database this test runs on, set up and reset according to its isolation."""
    plugin = _plugin(request)
    space = plugin.require("postgres")
    assert space.postgres is not None
    mode = _isolation(request.node)
    if mode == "rollback":
        yield EnvkitDatabase(mode, space.postgres, request.getfixturevalue("envkit_engine"), envkit_env.async_driver)
    elif mode == "truncate":
        from .provision import data

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
        from sqlalchemy import create_engine
        from sqlalchemy.pool import NullPool

        try:
            clone = space.clone()  # made ahead by the pool, its engine's first connection open (Workspace.prepare)
        except EnvkitError as exc:
            pytest.fail(f"envkit: {exc}", pytrace=False)
        pg = clone.postgres
        if clone.engine is None:
            clone.engine = create_engine(pg.url(), poolclass=NullPool)
        try:
            with _environ({"DATABASE_URL": pg.url(), "PGDATABASE": pg.database}):
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
        return _plugin(request).async_engine(envkit_db.async_url)
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
    plugin = _plugin(request)
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
    from .lifecycle import read_users

    session = _plugin(request).session
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
