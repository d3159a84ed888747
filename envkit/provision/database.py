"""Roles and databases on a running server, and the guard against real data.

Identifiers are composed with ``psycopg.sql.Identifier``; values are bound
(or, where PostgreSQL's utility statements take no parameters, quoted
client-side with ``sql.Literal``).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from typing import TYPE_CHECKING

from ..errors import ProvisionError, UnsafeTarget

if TYPE_CHECKING:
    from ..backends.base import PostgresEndpoint

log = logging.getLogger("envkit")

#: Names that look like a throwaway test database.
TEST_NAME = re.compile(r"(^|[_\-])tests?($|[_\-\d])|_test\d*$|^test", re.IGNORECASE)


def connect(conninfo: str, connect_timeout: int = 5):  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(conninfo, autocommit=True, connect_timeout=connect_timeout)


def ensure_role(pg: PostgresEndpoint) -> None:
    """Create the application role (a superuser on a server envkit owns), or reset its password."""
    from psycopg import sql

    with connect(pg.admin_url) as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (pg.user,)).fetchone()
        verb = "ALTER" if exists else "CREATE"
        conn.execute(sql.SQL("{} ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(pg.user), sql.Literal(pg.password)))


def database_exists(pg: PostgresEndpoint, name: str) -> bool:
    with connect(pg.admin_url) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def create_database(pg: PostgresEndpoint, name: str, *, owner: str | None = None, template: str | None = None,
                    exist_ok: bool = False) -> bool:
    """CREATE DATABASE; returns False when it existed and ``exist_ok``. Never adopts one otherwise."""
    from psycopg import errors, sql

    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner:
        query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    if template:
        query += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(template))
    with connect(pg.admin_url) as conn:
        try:
            conn.execute(query)
        except errors.DuplicateDatabase:
            if exist_ok:
                return False
            raise ProvisionError(
                f"database {name!r} already exists on {pg.host}:{pg.port}; envkit never adopts a database it did "
                "not create. Choose another name (postgres.database) or drop it yourself"
            ) from None
        except errors.FeatureNotSupported:  # PostgreSQL < 15 has no STRATEGY
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template or "template1")))
    return True


def drop_database(pg: PostgresEndpoint, name: str, *, created_by_envkit: bool) -> None:
    from psycopg import sql

    guard(pg, name, "drop", created_by_envkit=created_by_envkit)
    with connect(pg.admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


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


def guard(pg: PostgresEndpoint, database: str, operation: str, *, created_by_envkit: bool,
          allow_hosts: list[str] | tuple[str, ...] = (), allow_unsafe: bool = False) -> None:
    """Refuse a destructive ``operation`` on a database envkit did not create, unless it looks like a test one.

    Modelled on Rails' ProtectedEnvironmentError: the name must look like a
    test database and the host must be loopback or listed in allow_hosts.
    """
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
