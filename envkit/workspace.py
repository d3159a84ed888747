"""A test process's own corner of a running environment: its database and its Redis namespace.

Each pytest process (the only one, each pytest-xdist worker, and xdist's
controller, whose conftest imports read the environment too) works in a
database of its own, ``<database>_<run>_<worker>``, cloned with ``CREATE
DATABASE ... TEMPLATE`` from the environment's template: a copy of its
migrated and seeded database made by ``envkit up`` and closed to connections
(``ALLOW_CONNECTIONS false``), so clones never wait, nothing can write it, and
it is as pristine at the end as at the start. A clone gets the template's
owner, privileges and per-database settings (``search_path``), which ``CREATE
DATABASE`` alone does not copy. Redis:
a database index of its own on a server envkit started; where envkit may use
only one index (the external backend) workers share it under a key prefix.

Every name carries the run id, so the process that owns the run can sweep
whatever a crashed worker left behind (:func:`sweep`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from . import exports, services
from .clones import ClonePool
from .config import Config
from .errors import EnvkitError
from .provision import database
from .services import PostgresEndpoint, RedisEndpoint, Running
from .state import Session

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("envkit")

#: The worker id of a run without pytest-xdist.
MAIN = "main"
#: Redis databases on a server envkit started (the server's default; native and docker keep it).
_REDIS_DATABASES = 16
#: Characters of the environment's database name kept in derived names (63 at most, with the suffixes).
_BASE_CHARS = 45


def derived_name(database_name: str, run: str, *parts: str) -> str:
    """``<database>_<run>_<parts...>``: a database derived from the environment's for one run."""
    return "_".join([database_name[:_BASE_CHARS], run, *parts])


def endpoints(session: Session) -> tuple[PostgresEndpoint | None, RedisEndpoint | None]:
    """The environment's database and Redis, from the typed records its session keeps."""
    found = services.from_record(session.services, session.resources.get("admin_url"))
    pg, redis = found.get("postgres"), found.get("redis")
    return (pg if isinstance(pg, PostgresEndpoint) else None), (redis if isinstance(redis, RedisEndpoint) else None)


@dataclasses.dataclass
class Clone:
    """One test's database, cloned from the template, and what was prepared for it ahead of the test."""

    postgres: PostgresEndpoint
    engine: Any = None  # the test's SQLAlchemy engine, its first connection already open (Workspace.prepare)

    @property
    def database(self) -> str:
        return self.postgres.database


@dataclasses.dataclass
class Workspace:
    """This process's database and Redis namespace inside an environment."""

    config: Config
    session: Session
    run: str
    worker: str
    template: PostgresEndpoint | None  # the environment's migrated and seeded template (no connections allowed)
    postgres: PostgresEndpoint | None  # this process's copy
    redis: RedisEndpoint | None  # this process's index
    redis_prefix: str = ""  # set where workers share one index
    exports: dict[str, str] = dataclasses.field(default_factory=dict)
    _counter: Any = dataclasses.field(default_factory=lambda: itertools.count(1), repr=False)
    _like: database.Profile | None = dataclasses.field(default=None, repr=False)  # the template's owner, settings...
    _base: str = ""  # the environment's database: what derived names start with
    _pool: ClonePool[Clone] | None = dataclasses.field(default=None, repr=False)
    _redis_pool: Any = dataclasses.field(default=None, repr=False)
    #: Run on each clone as it is made (in the pool's threads): the plugin opens the test's engine there
    prepare: Callable[[PostgresEndpoint], Any] | None = dataclasses.field(default=None, repr=False)
    _local: threading.local = dataclasses.field(default_factory=threading.local, repr=False)
    _admins: list[Any] = dataclasses.field(default_factory=list, repr=False)  # every thread's admin connection
    _admins_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, config: Config, session: Session, run: str, worker: str = MAIN) -> Workspace:
        """Clone this process's database and choose its Redis index; see the module docstring."""
        env_pg, redis = endpoints(session)
        template = template_of(session, env_pg) if env_pg else None
        pg = None
        if env_pg and template:
            name = derived_name(env_pg.database, run, worker)
            like = database.profile(template, template.database)
            database.clone_database(template, name, template.database, timeout=config.timeout, like=like)
            pg = dataclasses.replace(template, database=name)
        prefix = ""
        if redis:
            number = int(m.group(1)) if (m := re.fullmatch(r"gw(\d+)", worker)) else None
            if number is not None and redis.owned and redis.db + 1 + number < _REDIS_DATABASES:
                redis = dataclasses.replace(redis, db=redis.db + 1 + number)
            elif number is not None:
                prefix = f"envkit:{run}:{worker}:"
        space = cls(config, session, run, worker, template, pg, redis, prefix)
        if pg is not None:
            space._like = like
            space._base = env_pg.database  # type: ignore[union-attr]
        space.exports = space._exports()
        return space

    # -- per-test databases ------------------------------------------------
    def expect_clones(self, count: int) -> None:
        """``count`` tests will ask for a clone: start preparing them in the background (:mod:`envkit.clones`)."""
        if count > 0 and self.template is not None:
            self._clones().expect(count)

    def clone(self) -> Clone:
        """A fresh database cloned from the template, for one test; :meth:`release` it afterwards."""
        if self.template is None:
            raise EnvkitError("this environment has no PostgreSQL database to clone")
        return self._clones().take()

    def release(self, clone: Clone) -> None:
        """A test's clone is done with: its engine disposed and the database dropped (in the background when the
        pool runs)."""
        self._clones().give_back(clone)

    def drop(self, pg: PostgresEndpoint) -> None:
        # the guard passes only what this process created
        self._as_admin(lambda conn: database.drop_database(pg, pg.database, conn=conn))

    def _clones(self) -> ClonePool[Clone]:
        if self._pool is None:
            self._pool = ClonePool(self._make_clone, self._drop_clone)
        return self._pool

    def _make_clone(self) -> Clone:
        assert self.template is not None
        template = self.template
        name = derived_name(self._base, self.run, self.worker, str(next(self._counter)))
        self._as_admin(lambda conn: database.clone_database(template, name, template.database,
                                                            timeout=self.config.timeout, like=self._like, conn=conn))
        clone = Clone(dataclasses.replace(template, database=name))
        if self.prepare is not None:
            try:
                clone.engine = self.prepare(clone.postgres)
            except BaseException:
                self.drop(clone.postgres)
                raise
        return clone

    def _drop_clone(self, clone: Clone) -> None:
        try:
            if clone.engine is not None:
                clone.engine.dispose()  # the first connection, if the test never used it; DROP ... FORCE ends the rest
        finally:
            self.drop(clone.postgres)

    def _as_admin(self, work: Callable[[Any], None]) -> None:
        """``work(conn)`` on this thread's admin connection, opened once: the pool's threads create and drop a
        database for every clone test, and a new connection each time (TCP, SCRAM) cost as much as the clone.
        Once more on a new connection when the server closed this one (a test that ended other backends)."""
        import psycopg

        conn = getattr(self._local, "admin", None)
        for attempt in (1, 2):
            if conn is None or conn.closed or conn.broken:
                conn = self._local.admin = database.connect(self._admin_url())
                with self._admins_lock:
                    self._admins.append(conn)
            try:
                work(conn)
                return
            except psycopg.OperationalError:
                if attempt == 2 or not (conn.closed or conn.broken):
                    raise

    def _admin_url(self) -> str:
        pg = self.template or self.postgres
        assert pg is not None
        return pg.admin_url

    def _close_admins(self) -> None:
        with self._admins_lock:
            conns, self._admins = self._admins, []
        for conn in conns:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort; the server ends them at teardown
                log.debug("envkit: closing an admin connection: %s", exc)

    # -- Redis ---------------------------------------------------------------
    def redis_client(self, **options: Any) -> Redis:
        """A client for this process's Redis index (from one connection pool)."""
        import redis

        if self.redis is None:
            raise EnvkitError("this environment has no Redis")
        if self._redis_pool is None:
            self._redis_pool = redis.ConnectionPool.from_url(self.redis.url, decode_responses=True)
        return redis.Redis(connection_pool=self._redis_pool, **options)

    def flush_redis(self) -> None:
        """Empty this process's namespace: its own index, or its prefix's keys; never another worker's."""
        if self.redis is None:
            return
        client = self.redis_client()
        if self.redis_prefix:
            _delete_prefixed(client, self.redis_prefix)
        else:
            database.guard_redis(self.redis, "flush", allow_hosts=self.config.redis.allow_hosts,
                                 allow_unsafe=self.config.allow_unsafe)
            client.flushdb()

    # -- the end -------------------------------------------------------------
    def close(self) -> None:
        """Drop the prepared clones and this process's database; empty its Redis namespace."""
        try:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.close()
        finally:
            try:
                if self.postgres:
                    self.drop(self.postgres)
            finally:
                try:
                    self._close_admins()
                finally:
                    self._close_redis()

    def _close_redis(self) -> None:
        try:
            self.flush_redis()
        finally:
            if self._redis_pool is not None:
                self._redis_pool.disconnect()

    def _exports(self) -> dict[str, str]:
        """The session's exports, pointed at this process's database and Redis index."""
        out = dict(self.session.exports)
        if self.postgres:
            out.update(DATABASE_URL=self.postgres.url(), PGDATABASE=self.postgres.database)
        if self.redis:
            out["REDIS_URL"] = self.redis.url
        if self.redis_prefix:
            out["ENVKIT_REDIS_PREFIX"] = self.redis_prefix
        if self.config.env:  # names the app reads itself: re-render those that mention the database or index
            template, redis = endpoints(self.session)
            try:
                before = _render(self.config, self.session, template, redis)
                after = _render(self.config, self.session, self.postgres, self.redis)
            except EnvkitError as exc:
                log.warning("could not point [env] exports at this process's database: %s", exc)
            else:
                out.update({k: v for k, v in after.items() if before.get(k) != v})
        return out


def template_of(session: Session, pg: PostgresEndpoint) -> PostgresEndpoint:
    """The environment's template database (sessions of an older envkit recorded none: their database is it)."""
    return dataclasses.replace(pg, database=session.template_database or pg.database)


def sweep(config: Config, session: Session, run: str) -> list[str]:
    """Drop whatever databases and Redis keys of ``run`` are left (a crashed worker's); returns the databases."""
    template, redis = endpoints(session)
    dropped = []
    if template:
        dropped = database.drop_derived(template, derived_name(template.database, run) + "_")
    if redis:
        import redis as redis_mod

        client = redis_mod.Redis.from_url(redis.url)
        try:
            _delete_prefixed(client, f"envkit:{run}:")
        finally:
            client.close()
    return dropped


def _delete_prefixed(client: Any, prefix: str) -> None:
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    batch = []
    for key in client.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def _render(config: Config, session: Session, pg: PostgresEndpoint | None, redis: RedisEndpoint | None) -> Mapping[str, str]:
    others = {n: ep for n, ep in services.from_record(session.services).items() if n not in ("postgres", "redis")}
    running = Running(backend=session.backend, postgres=pg, redis=redis, services=others)
    return exports.render(config.env, exports.context(config, running, session), config.source)
