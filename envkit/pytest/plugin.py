"""The plugin's state, one per pytest process: the environment it found (or brought up), this process's database.

:meth:`Plugin.start` runs from ``pytest_load_initial_conftests``, before any
conftest is imported; :meth:`Plugin.finish_process` and :meth:`Plugin.finish_run`
at the end (the hooks are in :mod:`envkit.pytest.hooks`). What tests ask of it
(:meth:`Plugin.require` and the rest) the fixtures in :mod:`envkit.pytest.fixtures` use.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from .. import isolation, signals
from ..environ import Patch
from ..errors import EnvkitError, StateError
from .types import EnvkitEnv

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..config import Config as EnvkitConfig
    from ..lifecycle import Environment
    from ..provision.data import Snapshot
    from ..services import PostgresEndpoint
    from ..state import Session
    from ..workspace import Workspace

MAIN = "main"  # the worker id of a run without xdist (envkit.workspace.MAIN, without importing it)
KEY = pytest.StashKey["Plugin"]()  # config.stash[KEY]: the process's Plugin
#: "<run id> <pid>" of the pytest process that owns the run: how its xdist workers learn the run id before their
#: workerinput exists (see Plugin.__post_init__)
RUN_VARIABLE = "ENVKIT_PYTEST_RUN"
# Environments left up by --envkit-keep: held until the interpreter exits, because collecting their
# still-running Popen objects earlier raises ResourceWarnings (errors under filterwarnings = error).
_KEPT: list[Environment] = []


@dataclass
class Plugin:
    config: pytest.Config
    worker: str = MAIN
    run: str = ""
    envkit_config: EnvkitConfig | None = None
    session: Session | None = None
    environment: Environment | None = None  # brought up by --envkit: ours to tear down
    workspace: Workspace | None = None
    problem: tuple[str, bool] | None = None  # (message, is an error rather than a reason to skip)
    found: str = ""  # how the environment was found, for the report header
    _environ: Patch = field(default_factory=Patch)  # what this process set in os.environ, to put back
    _put_back_sigterm: Callable[[], None] | None = None
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
        run, _, parent = os.environ.get(RUN_VARIABLE, "").partition(" ")
        if worker and run and parent == str(os.getppid()):
            self.worker, self.run = worker, run
        self.run = self.run or secrets.token_hex(3)

    def _option(self, name: str) -> Any:
        return getattr(self.config.known_args_namespace, name, None)

    # -- start -------------------------------------------------------------------
    def start(self) -> None:
        """Find (or bring up) the environment, clone this process's database, point os.environ at it."""
        if self.worker == MAIN:
            self._environ.set({RUN_VARIABLE: f"{self.run} {os.getpid()}"})  # for xdist's workers, spawned later
        wanted = self.worker == MAIN and bool(self._option("envkit") or self._option("envkit_backend"))
        try:
            self.envkit_config = self._load_config()
            self.session = self._locate()
            if self.session is not None:  # the settings it was made with (`envkit -c FILE up`), not just the ones here
                from ..recorded import made_with

                self.envkit_config = made_with(self.envkit_config, self.session)
            if self.session is None and wanted:
                self.environment = self._bring_up()
                self.session, self.found = self.environment.session, "brought up for this session"
        except Exception as exc:  # noqa: BLE001 - reported as envkit's own paragraph, never a traceback
            if wanted or isinstance(exc, StateError):
                # an environment is up (or was handed over) but cannot be used: stop before any conftest is imported,
                # or an application that reads its settings at import would run against whatever .env or the shell say
                self._stop(f"envkit: {describe(exc)}")
            self.problem = (f"envkit: {describe(exc)}", True)  # e.g. a config error and no environment: those tests fail
            return
        if self.session is None:
            self.problem = (self._missing(), False)
            return
        from ..workspace import Workspace

        try:
            self.workspace = Workspace.open(self.envkit_config, self.session, self.run, self.worker)
        except Exception as exc:  # noqa: BLE001
            # an environment is there, this process's database is not: stop before conftests point anywhere else
            self._stop(f"envkit: cannot set up this process's database and Redis: {describe(exc)}")
        self.workspace.prepare = _clone_engine
        self._environ.set(self.workspace.exports)

    def _stop(self, message: str) -> NoReturn:
        """No usable environment where one was asked for or is up: stop before any conftest runs against another one."""
        self._say(message)
        raise SystemExit(3)  # pytest's own cleanup runs finish_run: whatever was brought up is torn down

    def _load_config(self) -> EnvkitConfig:
        from ..config import load

        backend = self._option("envkit_backend")
        return load(self.config.invocation_params.dir, overrides={"backend": backend} if backend else None,
                    environ=os.environ)

    def _locate(self) -> Session | None:
        from .. import recorded, state

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
        session = recorded.current(self.envkit_config)
        if session is not None:  # changed migrations or seeds since `envkit up`: its database is not what they say
            recorded.check_fresh(self.envkit_config, session)
        return session

    def _bring_up(self) -> Environment:
        from .. import lifecycle

        assert self.envkit_config is not None
        self._say(f"envkit: bringing an environment up for this session ({self.envkit_config.backend} backend)")
        env = lifecycle.up(self.envkit_config)
        # CI cancellation sends SIGTERM: unwind like Ctrl-C, so the environment is torn down
        self._put_back_sigterm = signals.interrupt_on_sigterm()
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
            skip_or_fail(*self.problem)
        space = self.workspace
        assert space is not None
        if service == "postgres" and space.postgres is None:
            skip_or_fail("envkit: this environment has no PostgreSQL (postgres.enabled = false)", error=False)
        if service == "redis" and space.redis is None:
            skip_or_fail("envkit: this environment has no Redis (redis.enabled = false, or the external backend was "
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
        from ..exports import async_driver

        assert self.envkit_config is not None
        return async_driver(self.envkit_config)

    def snapshot(self) -> Snapshot:
        """The rows of this process's database before any truncate-isolated test wrote: what reseeding restores."""
        from ..provision import data

        if self._snapshot is None:
            space = self.require("postgres")
            assert space.postgres is not None
            self._snapshot = data.capture(space.postgres)
        return self._snapshot

    def restore_connection(self) -> Any:
        """One connection to this process's database for every truncate-and-reseed (closed before it is dropped)."""
        if self._restore_conn is None or self._restore_conn.closed:
            from ..provision.database import connect

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
        if self.session and name in self.session.created_databases:
            from ..provision import database

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
            self._environ.restore()

    def finish_run(self) -> None:
        """The run's owner: sweep what crashed workers left; tear down what --envkit brought up."""
        self.finish_process()  # when sessionfinish never ran (an error before the session)
        if self.worker != MAIN or self._finished:
            return
        self._finished = True
        try:
            if self.session is not None and self.envkit_config is not None:
                from ..workspace import sweep

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
            put_back, self._put_back_sigterm = self._put_back_sigterm, None
            if put_back is not None:
                put_back()

    def header(self) -> list[str]:
        if self.session is None:
            return [self.problem[0]] if self.problem and self.problem[1] else []
        space = self.workspace
        where = f"database {space.postgres.database}" if space and space.postgres else "no database"
        return [f"envkit: {self.session.label} ({self.session.backend} backend, {self.found}); {where}"]

    # -- helpers --------------------------------------------------------------------------
    def reapply_environ(self) -> None:
        """Put this process's values back over whatever another early hook (pytest-env) set meanwhile."""
        if self.workspace is not None:
            self._environ.set(self.workspace.exports)

    def _say(self, line: str) -> None:
        reporter = self.config.pluginmanager.getplugin("terminalreporter")
        if reporter is not None and self.worker == MAIN:
            reporter.write_line(line)
            return
        capman = self.config.pluginmanager.getplugin("capturemanager")  # the early hook runs under global capture
        with capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext():
            sys.stderr.write(line + "\n")
            sys.stderr.flush()


def describe(exc: Exception) -> str:
    text = str(exc).strip()
    return text if isinstance(exc, EnvkitError) else f"{type(exc).__name__}: {text}"


def _required() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes") or os.environ.get("ENVKIT_REQUIRE") == "1"


def skip_or_fail(message: str, error: bool) -> None:
    if error:
        pytest.fail(message, pytrace=False)
    if _required():
        pytest.fail(f"{message} (failing instead of skipping: CI or ENVKIT_REQUIRE is set)", pytrace=False)
    pytest.skip(message)


def of(request: pytest.FixtureRequest) -> Plugin:
    """The plugin of the process a fixture runs in."""
    return request.config.stash[KEY]


def isolation_of(node: pytest.Item) -> str | None:
    marker = node.get_closest_marker("envkit")
    return marker.kwargs.get("isolation", isolation.DEFAULT) if marker else None


def isolation_for(node: pytest.Item) -> str:
    marker = node.get_closest_marker("envkit")
    value = marker.kwargs.get("isolation", isolation.DEFAULT) if marker else isolation.DEFAULT
    try:
        return isolation.choose(value, f"@pytest.mark.envkit on {node.nodeid}")
    except EnvkitError as exc:
        pytest.fail(str(exc), pytrace=False)


def _clone_engine(pg: PostgresEndpoint) -> Engine:
    """A clone test's engine, made with its clone in the pool's threads: its first connection already open."""
    return isolation.opened_engine(pg.url())
