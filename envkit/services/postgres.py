"""PostgreSQL, built in: its ports, endpoint, exports and template values, and how it runs in a container.

How it runs is each backend's business (a cluster from initdb or the cache
natively, the official image's entrypoint in a container, somebody's server
externally); what it *is* lives here, once: the port inside a container, the
port envkit prefers on the host, the endpoint every layer passes on, and the
variables tests see. :func:`container` is what a container backend runs: the
image, its data path on tmpfs, the compose partial's values, the probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..config import Config

if TYPE_CHECKING:
    from .container import Container

NAME = "postgres"
CONTAINER_PORT = 5432
DEFAULT_PORT = 5433  # on the host: beside a developer's own server on 5432
TEMPLATE = "services/postgres.yml.j2"  # the compose partial
EXPORTS = ("DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")
#: Where the official image keeps its data before PostgreSQL 18 (and the stand-ins do).
PGDATA = "/var/lib/postgresql/data"
#: initdb options of envkit's postgres containers (POSTGRES_INITDB_ARGS); 1 MB WAL segments (PostgreSQL 11+)
#: instead of 16 make a snapshot, and so every restore, about 30 MB smaller.
INITDB_ARGS = "--no-sync -E UTF8 --locale=C"
WAL_SEGSIZE = "--wal-segsize=1"


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

    kind = NAME

    def url(self, driver: str | None = "psycopg", database: str | None = None) -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user, safe="")
        if self.password:
            auth += ":" + quote(self.password, safe="")
        return f"{scheme}://{auth}@{bracket(self.host)}:{self.port}/{quote(database or self.database, safe='')}"

    def libpq(self, database: str | None = None) -> str:
        return self.url(driver=None, database=database)

    def exports(self) -> dict[str, str]:
        """``DATABASE_URL`` (SQLAlchemy, psycopg 3) and libpq's ``PG*``, so ``psql`` needs no arguments."""
        return {"DATABASE_URL": self.url(), "PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                "PGPASSWORD": self.password, "PGDATABASE": self.database}

    def context(self, async_driver: str = "asyncpg") -> dict[str, Any]:
        """``{{ postgres.* }}`` in ``[env]`` templates; ``async_url`` uses ``async_driver``."""
        return {"host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.database, "url": self.url(), "libpq_url": self.libpq(),
                "async_url": self.url(async_driver), "asyncpg_url": self.url("asyncpg"),
                "psycopg_async_url": self.url("psycopg_async")}

    def record(self) -> dict[str, Any]:
        """What the state file keeps (the admin URL is the backend's: recorded in its resources)."""
        return {"kind": NAME, "host": self.host, "port": self.port, "user": self.user, "password": self.password,
                "database": self.database, "owned": self.owned, "version": self.version}

    @classmethod
    def from_record(cls, data: dict[str, Any], admin_url: str | None = None) -> PostgresEndpoint:
        pg = cls(host=data["host"], port=int(data["port"]), user=data["user"], password=data.get("password", ""),
                 database=data["database"], admin_url="", owned=bool(data.get("owned", True)),
                 version=data.get("version", ""))
        # creating databases: the external backend's admin URL; on servers envkit started the app role is a superuser
        return _replace(pg, admin_url=admin_url or pg.libpq("postgres"))


def bracket(host: str) -> str:
    """An IPv6 address in brackets, for URLs."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _replace(pg: PostgresEndpoint, **changes: Any) -> PostgresEndpoint:
    return replace(pg, **changes)


#: The superuser of a cluster envkit initialises itself (native).
SUPERUSER = "postgres"
#: Settings for a throwaway server: nothing needs to survive a crash.
THROWAWAY = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
#: Immediate shutdown: skips the shutdown checkpoint of data about to be deleted.
STOP_SIGNAL = "SIGQUIT"


def initdb_args(initdb: str, data: str, major: int) -> list[str]:
    """A cluster for tests: trust on the socket, passwords over TCP, no fsync while it is made."""
    args = [initdb, "-D", data, "-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync",
            "--auth-local=trust", "--auth-host=scram-sha-256"]
    # 1 MB WAL segments instead of 16: every cluster copy (cache, snapshot, each start) moves 15 MB less
    return args + (["--wal-segsize=1"] if major >= 11 else []) + (["--no-instructions"] if major >= 14 else [])


def native_settings(host: str, port: int, socket_dir: str, extra: dict[str, str]) -> dict[str, str]:
    """The server's settings as a local process: one address, its socket in the run directory, nothing durable."""
    return {
        "listen_addresses": host,
        "port": str(port),
        "unix_socket_directories": socket_dir,
        **THROWAWAY,
        "timezone": "UTC",
        "log_timezone": "UTC",
        "jit": "off",
        "dynamic_shared_memory_type": "mmap",  # in the data directory on tmpfs, not /dev/shm/PostgreSQL.*: a killed server leaves nothing
        **extra,
    }


def server_argv(postgres: str, data: str, settings: dict[str, str]) -> list[str]:
    argv = [postgres, "-D", data]
    for key, value in settings.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def admin_socket_url(socket_dir: str, port: int) -> str:
    """The superuser over the server's unix socket (trust: only this machine's users reach it)."""
    return f"host={socket_dir} port={port} user={SUPERUSER} dbname=postgres"


def password(configured: str | None) -> str:
    """The environment's password: the configured one, else a fresh one (URL-safe: it goes into URLs)."""
    import secrets

    return configured or secrets.token_urlsafe(18)


# -- in a container ------------------------------------------------------------
def container(config: Config, password: str) -> Container[PostgresEndpoint] | None:
    """The official image (or one like it) as a container backend runs it; None when disabled.

    ``password`` is the app role's, a superuser (the image's ``POSTGRES_USER``).
    """
    from .container import Container, Port

    pg = config.postgres
    if not pg.enabled:
        return None

    def endpoint(host: str, ports: dict[str, int]) -> PostgresEndpoint:
        found = PostgresEndpoint(host=host, port=ports[NAME], user=pg.user, password=password,
                                 database=config.database, admin_url="")
        return replace(found, admin_url=found.libpq(database="postgres"))

    return Container(NAME, pg.image, {NAME: Port(CONTAINER_PORT, DEFAULT_PORT, pg.port)}, endpoint, TEMPLATE,
                     compose_values(config, password), tmpfs=lambda env, volumes: tmpfs(pg.image, env.get("PGDATA"),
                                                                                        volumes),
                     probe=ready, facts=lambda ep: {"image": pg.image, "version": ep.version}, healthcheck=True,
                     setting="postgres.image")


def compose_values(config: Config, password: str) -> dict[str, Any]:
    """What ``services/postgres.yml.j2`` renders with: the server's command line and the image's environment."""
    settings = {**THROWAWAY, **config.postgres.settings}
    command = ["postgres"] + [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    return {"command": command, "pg": {"user": config.postgres.user, "password": password, "database": config.database,
                                       "initdb_args": image_initdb_args(config.postgres.image), "shm_size": "256m"}}


def ready(pg: PostgresEndpoint) -> PostgresEndpoint:
    """A query answered over TCP as the superuser (the image's first start serves its unix socket only, so this
    also waits out its initialisation); the endpoint with the server's version."""
    import psycopg

    with psycopg.connect(pg.admin_url, dbname=pg.database, connect_timeout=2, autocommit=True) as conn:
        conn.execute("SELECT 1")
        number = conn.info.server_version
    return replace(pg, version=f"{number // 10000}.{number % 10000}")


def tmpfs(image: str, pgdata: str | None = None, volumes: list[str] | None = None) -> list[str]:
    """The image's data path and declared volumes, all on tmpfs.

    ``pgdata``/``volumes`` come from inspecting the image when an engine is at
    hand; without one the tag decides (the official image moved its data to
    ``/var/lib/postgresql/18/docker``, under a ``VOLUME /var/lib/postgresql``, in 18).
    """
    if pgdata is None and volumes is None:
        major = image_major(image)
        if (major is None and _tag(image) in ("", "latest", "alpine", "bookworm", "trixie")) or (major or 0) >= 18:
            return ["/var/lib/postgresql"]
        return [PGDATA]
    from .container import tmpfs_paths

    return tmpfs_paths(volumes or [], pgdata or PGDATA)


def _tag(image: str) -> str:
    return image.rsplit("/", 1)[-1].partition(":")[2]


def image_major(image: str) -> int | None:
    """The PostgreSQL major version an image's tag names (``16-alpine``: 16), or None."""
    major = re.match(r"\d+", _tag(image))
    return int(major.group()) if major else None


def image_initdb_args(image: str) -> str:
    """POSTGRES_INITDB_ARGS for an image: 1 MB WAL segments unless its tag names a server older than 11."""
    major = image_major(image)
    return INITDB_ARGS if major is not None and major < 11 else f"{INITDB_ARGS} {WAL_SEGSIZE}"


def async_driver(wanted: str) -> str:
    """The SQLAlchemy asyncio driver for ``postgres.async_driver``: auto is asyncpg when it is installed, else psycopg."""
    if wanted == "auto":
        import importlib.util

        wanted = "asyncpg" if importlib.util.find_spec("asyncpg") is not None else "psycopg"
    return "psycopg_async" if wanted == "psycopg" else wanted
