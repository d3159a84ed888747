"""The lifecycle, in one place:

    reap stale → start (backend) → database → ready → migrate → seed → template → snapshot → export
    … hand off (tests or any command) …
    teardown (everything registered on one ExitStack, in reverse)

Each resource registers its teardown on the stack the moment it exists, so a
failure or a signal at any stage unwinds exactly what was started before it.

The hand-off to a command is :mod:`envkit.handoff`; environments recorded
earlier (found, judged stale, reaped, torn down from another process) are
:mod:`envkit.recorded`.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import cache, diagnostics, exports, progress, services, signals, state
from .backends import by_name
from .backends import select as select_backend
from .backends.base import Backend, SupportsPrepareNext
from .config import Config
from .errors import BackendUnavailable, EnvkitError, Interrupted, TeardownIncomplete
from .handoff import run_child
from .provision import database, redis_index
from .provision.migrate import kind_for, kind_of, migrate
from .provision.seed import seed
from .recorded import reap_stale
from .services import Running
from .state import Session, write_private
from .wait import wait_for
from .watchdog import start as start_watchdog

log = logging.getLogger("envkit")
T = TypeVar("T")

#: Called as reporter(stage, status, seconds, detail); status is "start", "done" or "failed", or "progress"
#: while a stage runs (detail: "service: what it is doing", from :mod:`envkit.progress`).
Reporter = Callable[[str, str, float, str], None]


def _log_reporter(stage: str, status: str, seconds: float, detail: str) -> None:
    if status == "progress":
        log.debug("%-9s %s", stage, detail)
    elif status != "start":
        log.info("%-9s %-6s %6.3f s  %s", stage, status, seconds, detail)


@dataclass
class Environment:
    """A running environment. Use it as a context manager, or call :meth:`down`."""

    config: Config
    session: Session
    running: Running
    exports: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)
    _stack: ExitStack | None = field(default=None, repr=False)

    @property
    def database_url(self) -> str:
        return self.exports["DATABASE_URL"]

    @property
    def redis_url(self) -> str:
        return self.exports["REDIS_URL"]

    def users(self) -> list[dict[str, Any]]:
        """The seeded users, with their plain passwords."""
        return read_users(self.session)

    def down(self) -> None:
        """Tear everything down; safe to call twice."""
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()

    def detach(self) -> None:
        """Leave it running for later commands (``envkit up``); ``envkit down`` ends it."""
        self.session.detached = True
        self.session.save()
        self._stack = None

    @contextlib.contextmanager
    def handing_over(self) -> Iterator[None]:
        """Around the last steps of ``envkit up``: a signal (or failure) before the hand-over is recorded
        tears the environment down; afterwards it belongs to ``envkit down``."""
        try:
            yield
            with signals.deferred(then_raise=False):  # the state is written whole, then the signal is looked at
                self.session.detached = True
                self.session.save()
            signals.check()
        except BaseException:
            self.down()
            raise
        self._stack = None

    def __enter__(self) -> Environment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()


def read_users(session: Session) -> list[dict[str, Any]]:
    import json

    try:
        return list(json.loads(session.users_file.read_text()))
    except FileNotFoundError:
        return []


def up(config: Config, *, reporter: Reporter | None = None, backend: Backend | None = None) -> Environment:
    """Bring an environment up: started, ready, migrated, seeded, exported.

    ``backend``: run the services on this object instead of the backend ``config.backend`` names
    (the unit tests' fake). Its ``name`` is recorded in the state; ``envkit down`` looks it up there.
    """
    report = reporter or _log_reporter
    timings: dict[str, float] = {}

    def stage(name: str, fn: Callable[..., T], *args: Any, detail: Callable[[T], str] | str = "") -> T:
        report(name, "start", 0.0, "")
        t0 = time.perf_counter()
        try:
            with progress.listening(lambda service, what: report(name, "progress", time.perf_counter() - t0,
                                                                 f"{service}: {what}")):
                result = fn(*args)
            signals.check()  # an interruption that something inside swallowed stops the pipeline here
        except BaseException as exc:
            failure = _interruption(exc)
            if not isinstance(failure, EnvkitError | Interrupted):
                raise  # a bug in envkit: the CLI prints its traceback
            failure.stage = failure.stage or name
            timings[name] = time.perf_counter() - t0
            report(name, "failed", timings[name], str(failure.args[0] if isinstance(failure, Interrupted) else failure)
                   .splitlines()[0])
            if failure is exc:
                raise
            raise failure from exc
        timings[name] = time.perf_counter() - t0
        report(name, "done", timings[name], detail(result) if callable(detail) else detail)
        return result

    if config.postgres.enabled:  # psycopg, for the readiness check and the database stages
        _preimport("psycopg")
    if config.env:  # user-defined exports are Jinja2 templates: its import (25-50 ms) overlaps the servers' start
        _preimport("jinja2")
    reap_stale(config)
    backend = backend if backend is not None else select_backend(config)
    for spec in services.specs(config):  # before anything starts: a service this backend cannot run is an error
        missing = services.unsupported(spec, backend.name, config.environ)
        if missing:
            raise BackendUnavailable(f"the {backend.name} backend cannot run service {spec.name!r}: {missing}")
    session = state.begin(config, backend.name)
    # capture() exits before the stack unwinds: a failure's bundle is written while the logs still exist
    with TeardownStack() as stack, diagnostics.capture(config, session, backend, timings, report):
        stack.push(_forget_unless_incomplete(session))
        if config.watchdog:  # tears down if this process is killed before it can (SIGKILL)
            stack.callback(start_watchdog(config, session))
        content = cache.contents(config) if config.postgres.enabled else {}
        session.contents = content  # an environment left up is found stale when these change
        session.config_file = config.source  # ... of the settings it was made with (-c FILE's, maybe)
        key = _snapshot_key(config, backend.name, content)
        if kind_of(config) == "alembic" and not (key and cache.has_entry(config, "snapshots", key)):
            _preimport("alembic.command")  # no snapshot: Alembic will run, so import it (0.1-0.3 s) while servers start
        running = stage("start", _start, backend, config, session, stack, key, detail=lambda r: _describe(r, session))
        pg = running.postgres
        env = exports.build(config, running, session)
        if pg:
            stage("database", _provision_database, config, pg, session, stack, running.restored, detail=pg.database)
            stage("ready", _probe, pg, config.timeout, detail=f"{pg.user}@{pg.host}:{pg.port}/{pg.database}")
            if running.restored:
                report("migrate", "done", 0.0, "from cache")
                report("seed", "done", 0.0, "from cache")
            else:
                stage("migrate", migrate, config, pg, env, detail=lambda d: d)
                stage("seed", seed, config, pg, session.users_file, env, detail=lambda d: d)
                stage("template", _make_template, config, pg, session, stack, detail=database.template_name(pg.database))
                if key:
                    stage("snapshot", backend.save_snapshot, config, session, running, key, detail="cached for next time")
        if pg:  # a snapshot holds the template too (its key says so)
            session.template_database = database.template_name(pg.database)
        session.exports = env
        session.services = services.record(running.services)
        session.timings = timings
        session.save()
        if config.dotenv:
            dotenv_path = config.path(config.dotenv)
            write_private(dotenv_path, exports.format_env(env, "dotenv"))
            stack.callback(dotenv_path.unlink, missing_ok=True)
        signals.check()
        return Environment(config, session, running, env, timings, stack.pop_all())
    raise AssertionError("unreachable")  # pragma: no cover


def _forget_unless_incomplete(session: Session) -> Callable[..., bool]:
    """The last step of a teardown: remove the state, unless the teardown before it failed (then it is the only
    record of what is still running, for ``envkit down`` or ``prune`` to finish)."""

    def forget(exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, TeardownIncomplete):
            session.detached = False  # no owner will finish it now: later commands may (an orphan once this exits)
            session.teardown_failed = str(exc)
            session.save()
        else:
            session.remove()
        return False

    return forget


class TeardownStack(ExitStack):
    """An ExitStack that unwinds with signals deferred: a second Ctrl-C does not cut teardown short."""

    def __exit__(self, *exc: Any) -> bool:
        with signals.deferred(then_raise=exc[0] is None):
            suppressed = super().__exit__(*exc)
        return bool(suppressed)


def _interruption(exc: BaseException) -> BaseException:
    """Once a signal arrived, the error it caused (a query cut off, a rollback refused) is not the news."""
    signum = signals.received()
    if signum is None or isinstance(exc, Interrupted) or not isinstance(exc, Exception):
        return exc
    return Interrupted(signum)


def _start(backend: Backend, config: Config, session: Session, stack: ExitStack, key: str | None) -> Running:
    running: Running = backend.start(config, session, stack, key)
    if running.redis:
        try:
            redis_index.check(running.redis)
        except EnvkitError as exc:
            exc.service = "redis"
            raise
    return running


def _probe(pg: Any, timeout: float) -> bool:
    return wait_for(lambda: database.probe(pg), service="postgres", what="connect with the app's credentials and SELECT 1",
                    timeout=timeout)


def _provision_database(config: Config, pg: Any, session: Session, stack: ExitStack, restored: bool) -> None:
    if pg.owned:
        if pg.admin_url != pg.libpq():
            database.ensure_role(pg)  # a restored snapshot holds the role: this sets this environment's password
        if not restored:  # ... and the database
            database.create_database(pg, pg.database, owner=pg.user, exist_ok=True)
    else:
        database.create_database(pg, pg.database, exist_ok=False)
        session.created_databases.append(pg.database)
        session.save()
        stack.callback(database.drop_database, pg, pg.database, created_by_envkit=True)
    if config.migrations.schema:
        database.prepare_schema(pg, config.migrations.schema)


def _make_template(config: Config, pg: Any, session: Session, stack: ExitStack) -> None:
    """The migrated and seeded database, copied into a template no test can connect to (see database.make_template)."""
    name = database.template_name(pg.database)
    if not pg.owned:
        session.created_databases.append(name)
        session.save()
        stack.callback(database.drop_database, pg, name, created_by_envkit=True)
    gc.collect()  # an in-process migration's engine (Alembic's env.py) closes its pooled connections when collected
    database.make_template(pg, name, timeout=config.timeout)


def _snapshot_key(config: Config, backend: str, content: dict[str, str]) -> str | None:
    if not config.cache or not config.postgres.enabled:
        return None
    if not kind_for(config).cacheable:
        return None  # e.g. an arbitrary command: its effect cannot be fingerprinted
    if backend == "external":
        return None  # somebody else's server: there is nothing to keep a snapshot in, or to start one from
    seeds = config.seed.file or config.seed.users or config.seed.sql or config.seed.hook
    if kind_of(config) == "none" and not seeds and backend != "docker":
        return None  # nothing to migrate or seed: the native pristine-cluster cache is the snapshot; a container
        # image initialises its cluster on every first start, so docker keeps even an empty one
    return cache.fingerprint(config, backend, "template", content=content)  # "template": it holds one


def _describe(running: Running, session: Session) -> str:
    parts = []
    if running.postgres:
        parts.append(f"postgres {running.postgres.version} on {running.postgres.host}:{running.postgres.port}")
    if running.redis:
        parts.append(f"redis {running.redis.version} on {running.redis.host}:{running.redis.port}")
    parts += [f"{name} on {ep.host}:{ep.port}" if ep.port else name for name, ep in running.user.items()]
    return ", ".join(parts) + (" (snapshot)" if running.restored else "")


_preimports: list[threading.Thread] = []


def _preimport(module: str) -> None:
    """Import a heavy module in the background while servers start."""
    if module not in sys.modules:
        thread = threading.Thread(target=__import__, args=(module,), daemon=True, name=f"envkit-import-{module}")
        thread.start()
        if not _preimports:
            atexit.register(_finish_preimports)
        _preimports.append(thread)


def _finish_preimports() -> None:
    """At exit, let background imports finish while threads still run.

    A daemon thread frozen by interpreter shutdown in the middle of an import keeps that module's
    lock for ever, and whatever imports it during shutdown then waits for ever.
    """
    deadline = time.monotonic() + 10
    for thread in _preimports:
        thread.join(max(deadline - time.monotonic(), 0))


@contextlib.contextmanager
def environment(config: Config, *, reporter: Reporter | None = None,
                backend: Backend | None = None) -> Iterator[Environment]:
    """``with envkit.environment(config) as env:`` brings it up and always tears it down (``backend``: see :func:`up`)."""
    env = up(config, reporter=reporter, backend=backend)
    try:
        yield env
    finally:
        env.down()


# -- a command in an environment: up → hand off (envkit.handoff) → down -----------

def run(config: Config, argv: Sequence[str], *, reporter: Reporter | None = None,
        keep: bool = False, keep_on_failure: bool = False, on_kept: Callable[[Environment], None] | None = None,
        on_up: Callable[[Environment], None] | None = None) -> int:
    """Bring the environment up, run ``argv`` in it, tear it down; returns the command's exit code."""
    env = up(config, reporter=reporter)
    code: int | None = None
    ahead = _prepare_next(env)
    try:
        if on_up:
            on_up(env)
        code = run_child(argv, {**config.environ, **env.exports}, session=env.session)
        return code
    finally:
        if ahead is not None:
            ahead.join()  # before teardown, which would otherwise start the same work
        if keep or (keep_on_failure and code != 0):
            env.detach()
            if on_kept:
                on_kept(env)
        else:
            try:
                if config.diagnostics == "always" and not signals.received():
                    with signals.deferred():
                        diagnose(env, reporter)
            finally:
                t0 = time.perf_counter()
                env.down()
                (reporter or _log_reporter)("down", "done", time.perf_counter() - t0, "")


def _prepare_next(env: Environment) -> threading.Thread | None:
    """What teardown would prepare for the next start (native: the spare copy), made while the command runs."""
    backend = by_name(env.session.backend)
    if not isinstance(backend, SupportsPrepareNext):
        return None

    def work() -> None:
        try:
            backend.prepare_next(env.session)
        except (Exception, Interrupted) as exc:  # noqa: BLE001 - an optimisation: teardown tries again
            # Interrupted: a Ctrl-C for the command also stops this copy (its `cp` got the terminal's SIGINT too);
            # the main thread reports the signal, once, without this thread's traceback
            log.debug("preparing the next start failed: %s", exc)

    thread = threading.Thread(target=work, name="envkit-next", daemon=True)
    thread.start()
    return thread


def diagnose(env: Environment, reporter: Reporter | None = None) -> None:
    """Write the diagnostics bundle of a running environment (``--diagnostics``): after ``up``, or before it goes down."""
    report = reporter or _log_reporter
    t0 = time.perf_counter()
    try:
        path = diagnostics.write(env.config, env.session, by_name(env.session.backend), timings=env.timings,
                                 running=env.running)
    except Exception as exc:  # noqa: BLE001 - diagnostics never turn a run into a failure
        log.warning("could not write the diagnostics bundle: %s", exc)
    else:
        report("diagnostics", "done", time.perf_counter() - t0, f"written to {path}")
