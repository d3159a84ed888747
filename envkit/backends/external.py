"""The external backend: PostgreSQL and Redis that somebody else started.

GitHub Actions ``services:``, a shared development server, the databases a CI
image ships with. envkit starts nothing here. It waits until both servers
answer, then works only inside what it is given:

* PostgreSQL: ``postgres.url`` (``ENVKIT_POSTGRES_URL``), or ``DATABASE_URL``
  from the environment, is the URL of a role that may create databases. envkit
  creates a fresh database named ``<database>_<session id>`` on that server
  (the lifecycle does, and never adopts one that exists), hands tests that
  database, and at teardown drops it and the databases derived from it
  (``<that name>_…``: the pytest plugin's per-process copies), each only if it
  carries the mark envkit set when it created it, nothing else.
* Redis: ``redis.url`` (``ENVKIT_REDIS_URL``), or ``REDIS_URL``. The index in
  the URL's path, else ``redis.db``, is the one envkit may use: it must be empty
  when envkit starts (unless ``redis.allow_flush``), it is flushed at teardown,
  and no other index is touched. Without a URL, envkit runs without Redis.

What teardown needs (the admin URL, the Redis index) is recorded in the
session's resources, so ``envkit down`` from another process can do it.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from .. import redact, services
from ..config import Config
from ..errors import BackendUnavailable, ConfigError, ServiceFailed, TeardownIncomplete, UnsafeTarget
from ..provision import database
from ..services import PostgresEndpoint, RedisEndpoint, ServiceSpec, probes, specs
from ..services.redis import ping as ping_redis
from ..services.user import endpoint
from ..state import Session
from ..wait import wait_for
from .base import Running

log = logging.getLogger("envkit")

#: Longest part of the configured database name kept in the fresh database's name, leaving room for
#: the session id and the plugin's per-process suffixes within PostgreSQL's 63 characters.
_BASE_CHARS = 36


class ExternalBackend:
    """Servers that are already running; envkit creates, and later drops, only its own database."""

    name: ClassVar[str] = "external"

    def start(self, config: Config, session: Session, stack: ExitStack, snapshot: str | None) -> Running:
        stack.callback(self.teardown, session)
        running = Running(backend=self.name)
        session.password = session.password or services.password(config)  # what user services' secrets derive from
        if config.postgres.enabled:
            url = config.postgres.url or config.environ.get("DATABASE_URL")
            if not url:
                raise BackendUnavailable(
                    "the external backend needs the URL of a running PostgreSQL server: set postgres.url "
                    "(ENVKIT_POSTGRES_URL) or DATABASE_URL, or set postgres.enabled = false"
                )
            admin = admin_endpoint(url)
            version = _wait_postgres(admin, config.timeout)
            session.resources["admin_url"] = admin.admin_url
            session.save()
            running.services["postgres"] = PostgresEndpoint(
                host=admin.host, port=admin.port, user=admin.user, password=admin.password,
                database=f"{config.database[:_BASE_CHARS]}_{session.id}", admin_url=admin.admin_url,
                owned=False, version=version,
            )
        if config.redis.enabled:
            url = config.redis.url or config.environ.get("REDIS_URL")
            if url:
                redis = redis_endpoint(url, config.redis.db)
                database.guard_redis(redis, "flush", allow_hosts=config.redis.allow_hosts, allow_unsafe=config.allow_unsafe)
                wait_for(lambda: ping_redis(redis.host, redis.port, redis.password), service="redis",
                         what=f"PING {redis.host}:{redis.port} answered with PONG", timeout=config.timeout)
                _refuse_keys(redis, config.redis.allow_flush)
                session.resources["redis"] = {"host": redis.host, "port": redis.port, "db": redis.db,
                                              "password": redis.password}
                session.save()
                running.services["redis"] = redis
            else:
                log.warning("redis: no redis.url (ENVKIT_REDIS_URL) or REDIS_URL given; running without Redis")
        for spec in specs(config):
            host, port = service_address(spec)
            host_ports = {name: port for name in spec.ports} or {"port": port}
            _wait_service(spec, host, host_ports, config.timeout)
            running.services[spec.name] = endpoint(spec, host, host_ports, config.project, owned=False, url=spec.url,
                                                   password=session.password)
        return running

    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        """Nothing to keep: the server is somebody else's (the lifecycle asks for no snapshot key here)."""

    def teardown(self, session: Session) -> None:
        """Drop the databases envkit created (and their derived copies); flush the one Redis index it used.

        Everything is attempted; then a refused drop raises UnsafeTarget, and a server that did not answer
        raises TeardownIncomplete (the state is kept, for a later ``envkit down``).
        """
        import psycopg

        failed: list[str] = []
        refused: list[UnsafeTarget] = []
        admin_url = session.resources.get("admin_url")
        if admin_url:
            admin = admin_endpoint(admin_url)
            for name in session.created_databases:
                try:
                    database.drop_recorded(admin, name)
                except UnsafeTarget as exc:
                    refused.append(exc)
                    continue
                except psycopg.Error as exc:
                    failed.append(f"postgres at {admin.host}:{admin.port} could not drop {name} "
                                  f"({str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__})")
                    continue
                try:
                    database.drop_derived(admin, f"{name}_")
                except psycopg.Error as exc:
                    failed.append(f"postgres at {admin.host}:{admin.port} could not drop the copies of {name} ({exc})")
        info = session.resources.get("redis")
        if info:
            import redis

            try:
                _flushdb(info)
            except redis.RedisError as exc:
                failed.append(f"redis at {info['host']}:{info['port']} could not flush db {info['db']} ({exc})")
        if failed:
            raise TeardownIncomplete(session.label, "; ".join(failed))
        if refused:
            raise refused[0] if len(refused) == 1 else UnsafeTarget("; ".join(str(r) for r in refused))

    def logs(self, session: Session, service: str | None = None) -> dict[str, str]:
        names = [service] if service else ["postgres", *(["redis"] if "redis" in session.resources else []),
                                           *(n for n, ep in session.services.items() if ep.get("kind") == "service")]
        return {name: "(the external backend did not start this server and has no access to its log)" for name in names}


def admin_endpoint(url: str) -> PostgresEndpoint:
    """The server and role of a libpq or SQLAlchemy URL (``postgresql+psycopg://`` is accepted)."""
    import psycopg  # the package first: lifecycle may be importing it in another thread

    libpq = _strip_driver(url)
    try:
        parts = psycopg.conninfo.conninfo_to_dict(libpq)
    except Exception as exc:  # noqa: BLE001 - psycopg's parse error names the problem
        raise ConfigError(f"cannot parse the PostgreSQL URL for the external backend: {exc}") from None
    host = str(parts.get("host") or "")
    if not host or host.startswith("/") or "," in host:
        raise ConfigError(
            f"the external backend needs one TCP host in the PostgreSQL URL, found {host or 'none'!r}; "
            "write it as postgresql://user:password@host:5432/postgres"
        )
    return PostgresEndpoint(
        host=host, port=int(parts.get("port") or 5432), user=str(parts.get("user") or "postgres"),
        password=str(parts.get("password") or ""), database=str(parts.get("dbname") or "postgres"),
        admin_url=libpq, owned=False,
    )


def redis_endpoint(url: str, default_db: int) -> RedisEndpoint:
    """The server of a ``redis://`` URL, and the index envkit may use: the URL's, else ``redis.db``."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ConfigError(f"the external backend supports redis:// URLs, found {parts.scheme}:// in {redact.url(url)}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"the path of the Redis URL must be a database index, found {path!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"the Redis URL has an invalid port: {redact.url(url)}") from None
    return RedisEndpoint(host=parts.hostname or "127.0.0.1", port=port, db=int(path) if path else default_db,
                         password=unquote(parts.password) if parts.password else None, owned=False)


def _strip_driver(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith(("postgresql+", "postgres+")):
        return "postgresql://" + rest
    return url


def _wait_postgres(admin: PostgresEndpoint, timeout: float) -> str:
    import psycopg

    def check() -> str:
        try:
            with database.connect(admin.admin_url, connect_timeout=2) as conn:
                row = conn.execute("SHOW server_version").fetchone()
        except psycopg.OperationalError as exc:
            message = str(exc).strip()
            if "authentication failed" in message or "does not exist" in message:
                raise ServiceFailed(  # waiting will not fix credentials
                    f"postgres at {admin.host}:{admin.port} refused the URL given to the external backend: "
                    f"{message.splitlines()[-1]}. Fix postgres.url or DATABASE_URL", "postgres") from None
            raise
        return str(row[0]).split()[0] if row else "?"

    return wait_for(check, service="postgres", what=f"connect to {admin.host}:{admin.port} as {admin.user} and ask its version",
                    timeout=timeout)


def _refuse_keys(redis: RedisEndpoint, allow_flush: bool) -> None:
    """envkit empties its index at teardown (and the plugin before the tests): it must hold nothing of anyone's."""
    import redis as redis_mod

    client = redis_mod.Redis(host=redis.host, port=redis.port, db=redis.db, password=redis.password, socket_timeout=5)
    try:
        keys = int(client.dbsize())
    except redis_mod.ResponseError:
        return  # no such index (`redis.db = 99`): the lifecycle's index check says so
    finally:
        client.close()
    if not keys:
        return
    if allow_flush:
        log.warning("redis: db %d on %s:%d holds %d keys; redis.allow_flush lets envkit empty it", redis.db, redis.host,
                    redis.port, keys)
        return
    raise UnsafeTarget(
        f"redis db {redis.db} on {redis.host}:{redis.port} already holds {keys} key{'s' if keys != 1 else ''}; envkit "
        "empties the index it uses, so it uses only one that is empty when it starts. Give it an empty index (the "
        "number at the end of redis.url or REDIS_URL, else redis.db), or, if those keys are disposable, set "
        "redis.allow_flush = true (ENVKIT_REDIS_ALLOW_FLUSH=1)")


def _flushdb(info: dict[str, Any]) -> None:
    import redis

    client = redis.Redis(host=info["host"], port=info["port"], db=info["db"], password=info.get("password"),
                         socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()




def service_address(spec: ServiceSpec) -> tuple[str, int]:
    """The host and port of a user service's ``url``: ``host:port``, or a URL with a scheme (its default port)."""
    url = str(spec.url)
    parts = urlsplit(url if "://" in url else f"tcp://{url}")
    try:
        port = parts.port or {"http": 80, "https": 443, "amqp": 5672, "redis": 6379}.get(parts.scheme)
    except ValueError:
        port = None
    if not parts.hostname or not port:
        raise ConfigError(f"{spec.where}: url = {redact.url(url)!r} names no host and port; write it as "
                          "\"host:port\" or \"scheme://host:port\"")
    return parts.hostname, port


def _wait_service(spec: ServiceSpec, host: str, host_ports: dict[str, int], timeout: float) -> None:
    """Its probe where one can run from here (tcp, http, a command on this machine), else a TCP connect."""
    probe = spec.probe
    port = host_ports[spec.port_of(probe.port)] if probe.port in host_ports else next(iter(host_ports.values()))
    if probe.kind == "http":
        wait_for(lambda: probes.http(host, port, str(probe.target)), service=spec.name,
                 what=f"GET {probe.target} on {host}:{port} answers", timeout=timeout)
    elif probe.kind == "command":
        wait_for(lambda: probes.command(probe.target), service=spec.name, what=f"{' '.join(probe.target)} exits 0",
                 timeout=timeout)
    else:  # tcp, health, log: a log is not ours to read
        wait_for(lambda: probes.tcp(host, port), service=spec.name, what=f"{host}:{port} accepts connections",
                 timeout=timeout)
