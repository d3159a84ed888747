"""Roles and databases on a running server, and the guard against real data.

Identifiers are composed with ``psycopg.sql.Identifier``; values are bound
(or, where PostgreSQL's utility statements take no parameters, quoted
client-side with ``sql.Literal``).

The guard: migrate, seed, truncate, flush and drop go through :func:`guard`
(or :func:`guard_redis`), which lets them touch a database only when envkit
owns the server, created that database itself (this process remembers what
:func:`create_database` made; other processes pass ``created_by_envkit``), or
the database looks disposable: a test-like name on a loopback or allowed host.
``allow_unsafe`` (``ENVKIT_ALLOW_UNSAFE=1``) overrides it, with a warning.

On a server envkit did not start, every database it creates carries a mark:
``COMMENT ON DATABASE <name> IS 'envkit:<name>'``. A teardown from the state
file (another process: ``envkit down``, a watchdog, a sweep after a crash)
drops only the exact names recorded there and the copies derived from them
(``<name>_…``: the template, the pytest plugin's per-process and per-test
ones), and only those that carry the mark: a record is never proof enough,
and a name prefix never is either.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ProvisionError, ReadyTimeout, UnsafeTarget
from ..wait import wait_for

if TYPE_CHECKING:
    from ..config import Config
    from ..services import PostgresEndpoint, RedisEndpoint

log = logging.getLogger("envkit")

#: Names that look like a throwaway test database.
TEST_NAME = re.compile(r"(^|[_\-])tests?($|[_\-\d])|_test\d*$|^test", re.IGNORECASE)
#: PostgreSQL's longest identifier (NAMEDATALEN - 1); longer names are silently truncated.
MAX_NAME = 63
#: Characters of a database's name kept in names derived from it (63 at most, with the suffixes).
_BASE_CHARS = 45

# (host, port, name) of every database this process created: the guard lets envkit drop what it made.
_created: set[tuple[str, int, str]] = set()


def created_here(pg: PostgresEndpoint, name: str) -> bool:
    """Whether this process created database ``name`` on ``pg``'s server (and has not dropped it)."""
    return (pg.host, pg.port, name) in _created


def connect(conninfo: str, connect_timeout: int = 5):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)


@contextlib.contextmanager
def _admin(pg: PostgresEndpoint, conn: Any) -> Iterator[Any]:
    """``conn`` (an open autocommit connection of the admin URL, left open) or a new one for this call."""
    if conn is not None:
        yield conn
        return
    with connect(pg.admin_url) as new:
        yield new


def ensure_role(pg: PostgresEndpoint) -> None:
    """Create the application role on a server envkit owns, or reset its password.

    Every attribute on (SUPERUSER, CREATEDB, CREATEROLE, REPLICATION, BYPASSRLS), as the Docker image's bootstrap
    superuser has them: a suite that checks ``rolcreatedb`` sees the same on every backend.
    """
    from psycopg import sql

    with connect(pg.admin_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.user,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL("{} ROLE {} LOGIN SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(pg.user), sql.Literal(pg.password)))


def database_exists(pg: PostgresEndpoint, name: str) -> bool:
    with connect(pg.admin_url) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


@dataclass(frozen=True)
class Profile:
    """What a database carries beside its content, which ``CREATE DATABASE ... TEMPLATE`` does not copy."""

    owner: str
    #: (grantee, privilege, grantable) from its ACL, grantee "" for PUBLIC; None: the default privileges
    privileges: tuple[tuple[str, str, bool], ...] | None
    #: (role, name, value) from ALTER [ROLE ...] DATABASE ... SET, role "" for every role
    settings: tuple[tuple[str, str, str], ...]


def profile(pg: PostgresEndpoint, name: str) -> Profile:
    """Owner, privileges and per-database settings of database ``name`` (pg_database, pg_db_role_setting)."""
    with connect(pg.admin_url) as conn:
        row = conn.execute("SELECT pg_get_userbyid(datdba), datacl IS NULL FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
        if row is None:
            raise ProvisionError(f"database {name!r} does not exist on {pg.host}:{pg.port}; the environment's template "
                                 "is gone: envkit up --replace makes it again")
        privileges = None if row[1] else tuple(conn.execute(
            "SELECT coalesce(r.rolname, ''), a.privilege_type, a.is_grantable FROM pg_database d "
            "CROSS JOIN LATERAL aclexplode(d.datacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee "
            "WHERE d.datname = %s ORDER BY 1, 2", (name,)).fetchall())
        settings = []
        for role, items in conn.execute(
                "SELECT coalesce(r.rolname, ''), s.setconfig FROM pg_db_role_setting s "
                "JOIN pg_database d ON d.oid = s.setdatabase LEFT JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE d.datname = %s ORDER BY 1", (name,)).fetchall():
            settings += [(role, *item.split("=", 1)) for item in items or [] if "=" in item]
    return Profile(owner=row[0], privileges=privileges, settings=tuple(settings))


def create_database(pg: PostgresEndpoint, name: str, *, owner: str | None = None, template: str | None = None,
                    exist_ok: bool = False, like: Profile | None = None, conn: Any = None) -> bool:
    """CREATE DATABASE; returns False when it existed and ``exist_ok``. Never adopts one otherwise.

    ``like``: give it that owner, privileges and settings (a clone's template's :func:`profile`).
    ``conn``: an open autocommit admin connection to run it on (a pool's thread keeps one: a new connection
    over TCP pays SCRAM and a backend start, as much as the clone itself on a busy machine).
    """
    from psycopg import errors, sql

    owner = like.owner if like else owner
    head = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        head += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    query = head
    if template:
        # FILE_COPY forces checkpoints: fastest on envkit's own fsync-off tmpfs servers, 5-20x slower than
        # WAL_LOG on a real one (an external server, fsync on)
        strategy = "FILE_COPY" if pg.owned else "WAL_LOG"
        query = head + sql.SQL(" TEMPLATE {} STRATEGY {}").format(sql.Identifier(template), sql.SQL(strategy))
    with _admin(pg, conn) as conn:
        try:
            conn.execute(query)
        except errors.InsufficientPrivilege:
            raise ProvisionError(
                f"the role connecting to {pg.host}:{pg.port} may not create database {name!r}; give envkit the URL "
                "of a role with CREATEDB (postgres.url, or DATABASE_URL for the external backend)"
            ) from None
        except errors.DuplicateDatabase:
            if exist_ok:
                return False
            raise ProvisionError(
                f"database {name!r} already exists on {pg.host}:{pg.port}; envkit never adopts a database it did "
                "not create. Choose another name (postgres.database) or drop it yourself"
            ) from None
        except errors.FeatureNotSupported:  # PostgreSQL < 15 has no STRATEGY
            conn.execute(head + sql.SQL(" TEMPLATE {}").format(sql.Identifier(template or "template1")))
        _created.add((pg.host, pg.port, name))
        if not pg.owned:  # a crash between these two leaves one database unmarked: never dropped, only reported
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(mark(name))))
        if like:
            _carry(conn, name, like)
    return True


def mark(name: str) -> str:
    """The comment envkit puts on database ``name`` when it creates it on a server it did not start."""
    return f"envkit:{name}"


def marked(pg: PostgresEndpoint, name: str) -> bool | None:
    """Whether database ``name`` carries envkit's mark; None if there is no such database."""
    with connect(pg.admin_url) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
    return None if row is None else row[0] == mark(name)


def _carry(conn, name: str, like: Profile) -> None:  # type: ignore[no-untyped-def]
    """Give database ``name`` the privileges and settings of ``like``."""
    from psycopg import sql

    db = sql.Identifier(name)
    if like.privileges is not None:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(db, sql.Identifier(like.owner)))
        for grantee, privilege, grantable in like.privileges:
            conn.execute(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), db, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
    for role, setting, value in like.settings:
        target = (sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(role), db) if role
                  else sql.SQL("DATABASE {}").format(db))
        values = _split_list(value) if setting in _LIST_SETTINGS else [value]
        conn.execute(sql.SQL("ALTER {} SET {} TO {}").format(
            target, sql.SQL(".").join(sql.Identifier(part) for part in setting.split(".")),
            sql.SQL(", ").join(sql.Literal(v) for v in values)))


#: Settings whose stored value is a list of quoted identifiers (pg_dump's list): set element by element
_LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries",
                  "shared_preload_libraries", "unix_socket_directories"}


def _split_list(value: str) -> list[str]:
    """``"My Schema", public`` -> ``['My Schema', 'public']``: the stored form of a list setting, unquoted."""
    items, current, quoted, i = [], [], False, 0
    while i < len(value):
        char = value[i]
        if char == '"' and quoted and value[i + 1:i + 2] == '"':
            current.append('"')
            i += 1
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def template_name(database: str) -> str:
    """The environment's template: its migrated and seeded database, which tests never connect to."""
    return f"{database[:_BASE_CHARS]}_template"


def make_template(pg: PostgresEndpoint, name: str, *, timeout: float = 10.0) -> None:
    """Copy ``pg.database`` into ``name`` and close it to connections: clones are made from it, nothing writes it.

    ``ALLOW_CONNECTIONS false`` refuses every role, superusers too, and a
    template still clones from it; a test that connects to it fails with
    "database ... is not currently accepting connections".
    """
    from psycopg import sql

    # Nothing but migrate and seed has used this database, which envkit created: a session still on it is theirs
    # (a pool Alembic's env.py left open) and would block the copy, so it goes.
    with connect(pg.admin_url) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                                           (pg.database,)).fetchall()]
        ended = [pid for pid in pids if conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]]  # type: ignore[index]
    if ended:
        log.debug("closed %d session(s) that migrate or seed left on %s", len(ended), pg.database)
    clone_database(pg, name, pg.database, timeout=timeout)
    with connect(pg.admin_url) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))


def clone_database(pg: PostgresEndpoint, name: str, template: str, *, timeout: float = 10.0,
                   like: Profile | None = None, conn: Any = None) -> None:
    """``CREATE DATABASE name TEMPLATE template``, waiting while other sessions still use the template.

    The clone gets the template's owner, privileges and settings (``like``, or read now).
    """
    from psycopg import errors

    like = like or profile(pg, template)

    def attempt() -> bool | Exception:
        try:
            create_database(pg, name, template=template, like=like, conn=conn)
        except errors.ObjectInUse:
            raise  # somebody is connected to the template: try again
        except Exception as exc:  # noqa: BLE001 - anything else will not get better by waiting
            return exc
        return True

    try:
        outcome = wait_for(attempt, service="postgres", what=f"clone database {template!r} into {name!r}",
                           timeout=timeout, interval=0.02, max_interval=0.25)
    except ReadyTimeout:
        raise ProvisionError(
            f"cannot clone database {template!r} on {pg.host}:{pg.port}: other sessions are connected to it "
            f"({_sessions_on(pg, template)}). envkit uses it as the template of each test process's database; close "
            "those connections (a psql shell, a running app) and run again"
        ) from None
    if isinstance(outcome, Exception):
        raise outcome


def _sessions_on(pg: PostgresEndpoint, database: str) -> str:
    try:
        with connect(pg.admin_url) as conn:
            rows = conn.execute(
                "SELECT coalesce(nullif(application_name, ''), 'unnamed') || ' (pid ' || pid || ')' FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()", (database,)).fetchall()
    except Exception as exc:  # noqa: BLE001 - only for the message
        return f"could not list them: {exc}"
    return ", ".join(r[0] for r in rows) or "none left now"


def drop_database(pg: PostgresEndpoint, name: str, *, created_by_envkit: bool | None = None,
                  allow_hosts: Sequence[str] = (), allow_unsafe: bool = False, conn: Any = None) -> None:
    """DROP DATABASE ... WITH (FORCE), through :func:`guard`; ``conn`` as in :func:`create_database`."""
    from psycopg import sql

    guard(pg, name, "drop", created_by_envkit=created_by_envkit, allow_hosts=allow_hosts, allow_unsafe=allow_unsafe)
    with _admin(pg, conn) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    _created.discard((pg.host, pg.port, name))


def drop_recorded(pg: PostgresEndpoint, name: str) -> None:
    """Drop database ``name`` that a state file says envkit created, if it carries envkit's mark (or, on a server
    envkit started, always); UnsafeTarget, naming it, if it does not: a record can be edited or stale."""
    proven = pg.owned or created_here(pg, name) or marked(pg, name)
    if proven is None:
        return  # dropped already
    if not proven:
        raise UnsafeTarget(
            f"refusing to drop database {name!r} on {pg.host}:{pg.port}: the state file lists it as envkit's, but it "
            f"does not carry the mark envkit puts on every database it creates (COMMENT {mark(name)!r}), so envkit "
            "did not create it; it was left alone. Drop it yourself if it really is disposable")
    drop_database(pg, name, created_by_envkit=True)


def drop_derived(pg: PostgresEndpoint, prefix: str) -> list[str]:
    """Drop the databases envkit derived from one it created: names starting with ``prefix``, which carries a
    part unique to one environment or run (a session or run id).

    On a server envkit did not start, a name is not enough: only databases
    carrying envkit's mark go; any other is left alone, with a warning.
    """
    with connect(pg.admin_url) as conn:
        rows = conn.execute(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database "
            "WHERE left(datname, %s) = %s AND NOT datistemplate", (len(prefix), prefix)).fetchall()
    dropped = []
    for name, comment in rows:
        if pg.owned or comment == mark(name) or created_here(pg, name):
            drop_database(pg, name, created_by_envkit=True)
            dropped.append(name)
        else:
            log.warning("left database %s on %s:%d alone: its name begins %s, but it does not carry envkit's mark "
                        "(COMMENT %r), so envkit did not create it", name, pg.host, pg.port, prefix, mark(name))
    return dropped


def prepare_schema(pg: PostgresEndpoint, schema: str) -> None:
    """Create ``schema`` and make it the database's first search_path entry."""
    from psycopg import sql

    with connect(pg.libpq()) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
            sql.Identifier(schema), sql.Identifier(pg.user)))
        conn.execute(sql.SQL("ALTER DATABASE {} SET search_path TO {}, public").format(
            sql.Identifier(pg.database), sql.Identifier(schema)))


def probe(pg: PostgresEndpoint) -> bool:
    """Readiness as the tests will see it: the app's credentials, over TCP, the target database."""
    with connect(pg.libpq(), connect_timeout=2) as conn:
        conn.execute("SELECT 1")
    return True


def is_loopback(host: str) -> bool:
    if host.startswith("/") or host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def guard(pg: PostgresEndpoint, database: str, operation: str, *, created_by_envkit: bool | None = None,
          allow_hosts: Sequence[str] = (), allow_unsafe: bool = False) -> None:
    """Refuse a destructive ``operation`` on a database envkit did not create, unless it looks like a test one.

    Modelled on Rails' ProtectedEnvironmentError: the name must look like a
    test database and the host must be loopback or listed in allow_hosts.
    ``created_by_envkit=None`` asks whether this process created it.
    """
    if created_by_envkit is None:
        created_by_envkit = created_here(pg, database)
    if created_by_envkit or pg.owned:
        return
    reasons = []
    if not TEST_NAME.search(database):
        reasons.append(f"its name {database!r} does not look like a test database (no 'test' in it)")
    if not (is_loopback(pg.host) or pg.host in allow_hosts):
        reasons.append(f"its host {pg.host!r} is not loopback and not in postgres.allow_hosts")
    if not reasons:
        return
    if allow_unsafe:
        log.warning("%s on database %r at %s:%d allowed by ENVKIT_ALLOW_UNSAFE although %s",
                    operation, database, pg.host, pg.port, " and ".join(reasons))
        return
    raise UnsafeTarget(
        f"refusing to {operation} database {database!r} on {pg.host}:{pg.port}: envkit did not create it, and "
        f"{' and '.join(reasons)}. If this really is a disposable test database, set ENVKIT_ALLOW_UNSAFE=1 "
        "(logged), or list the host in postgres.allow_hosts"
    )


def guard_with(config: Config, pg: PostgresEndpoint, database: str, operation: str, *,
               created_by_envkit: bool | None = None) -> None:
    """:func:`guard` with the configured ``postgres.allow_hosts`` and ``allow_unsafe``."""
    guard(pg, database, operation, created_by_envkit=created_by_envkit,
          allow_hosts=config.postgres.allow_hosts, allow_unsafe=config.allow_unsafe)


def guard_redis(redis: RedisEndpoint, operation: str, *, allow_hosts: Sequence[str] = (), allow_unsafe: bool = False) -> None:
    """Refuse to ``operation`` (flush) a Redis database on a server envkit does not own, unless its host is local.

    The index is one envkit was told it may use (``redis.db``); the host check
    catches a REDIS_URL that points at a shared or production server.
    """
    if redis.owned or is_loopback(redis.host) or redis.host in allow_hosts:
        return
    reason = f"its host {redis.host!r} is not loopback and not in redis.allow_hosts"
    if allow_unsafe:
        log.warning("%s of redis db %d at %s:%d allowed by ENVKIT_ALLOW_UNSAFE although %s",
                    operation, redis.db, redis.host, redis.port, reason)
        return
    raise UnsafeTarget(
        f"refusing to {operation} redis database {redis.db} on {redis.host}:{redis.port}: envkit did not start that "
        f"server, and {reason}. If it is a disposable test server, list the host in redis.allow_hosts, or set "
        "ENVKIT_ALLOW_UNSAFE=1 (logged)"
    )
