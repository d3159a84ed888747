"""Is the environment that is up still whole? Checked each time one is reused, never assumed.

A suite's fixtures may drop ``<project>_test``; a server may be killed; a
container removed. :func:`check` looks, per backend, at what the session
recorded, then asks PostgreSQL whether the environment's database exists:

    native    each server's pid still alive and still this session's
    docker    each container still there and running (the engine's API on its socket)
    external  Redis answers PING (PostgreSQL: the query below answers for it)
    all       the environment's database and its template in ``pg_database``, one query

It runs on every plain ``pytest`` with an environment up, so it costs a few
/proc reads or one request to the engine, and one connection (bench/health.py
measures it). :func:`require` turns what is gone into :class:`EnvironmentGone`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from .errors import EnvironmentGone
from .state import Session

CONNECT_TIMEOUT = 2  # seconds: a loopback server answers in milliseconds; a dead remote one should not hang a run


@dataclass(frozen=True)
class Gone:
    """One part of the environment that is missing: ``what`` (a service, or "database") and how that shows."""

    what: str
    detail: str

    def __str__(self) -> str:
        return self.detail


@dataclass(frozen=True)
class Health:
    """What :func:`check` found: nothing gone means healthy."""

    label: str
    backend: str
    gone: tuple[Gone, ...] = ()
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.gone


def check(session: Session) -> Health:
    """Look at each server or container the session recorded, and at its database."""
    t0 = time.perf_counter()
    gone = list(_BACKENDS.get(session.backend, _nothing)(session))
    if not any(g.what == "postgres" for g in gone):
        gone += _database(session)
    return Health(session.label, session.backend, tuple(gone), time.perf_counter() - t0)


def require(session: Session) -> Health:
    """:func:`check`, raising :class:`EnvironmentGone` (naming what is gone, and the fix) unless healthy."""
    found = check(session)
    if not found.ok:
        raise EnvironmentGone(session.label, [str(g) for g in found.gone])
    return found


# -- per backend ------------------------------------------------------------------

def _native(session: Session) -> list[Gone]:
    from .backends.native.backend import is_server

    run_dir = session.resources.get("run_dir")
    return [Gone(service, f"{service} (pid {info['pid']}) is no longer running")
            for service, info in sorted(session.resources.get("processes", {}).items())
            if not is_server(info["pid"], session.label, run_dir)]


def _docker(session: Session) -> list[Gone]:
    found = session.resources.get("containers") or {}
    url = (session.resources.get("engine") or {}).get("url", "unix:///var/run/docker.sock")
    if not url.startswith("unix://"):
        return _ports(session)  # a remote engine: its API needs TLS or ssh (the SDK, 0.3 s); its ports tell enough
    from .backends.docker.engine import get as engine_get  # the one plain HTTP client for the engine's socket

    path = url[len("unix://"):]
    gone = []
    for service, container in sorted(found.items()):
        try:
            status, body = engine_get(path, f"/containers/{container}/json")
        except OSError as exc:
            return [Gone("docker", f"the Docker engine at {url} does not answer ({exc}), so its containers cannot be "
                                   "checked")]
        if status == 404:
            gone.append(Gone(service, f"{service}'s container {container[:12]} was removed"))
            continue
        state = (body or {}).get("State") or {}
        if not state.get("Running") or state.get("Paused"):
            code = f", exit code {state.get('ExitCode')}" if state.get("Status") == "exited" else ""
            gone.append(Gone(service, f"{service}'s container {container[:12]} is {state.get('Status', 'not running')}"
                                      f"{code}"))
    return gone


def _external(session: Session) -> list[Gone]:
    from .services.redis import ping as ping_redis

    info = session.resources.get("redis")
    if not info:
        return []
    where = f"{info['host']}:{info['port']}"
    try:
        if ping_redis(info["host"], info["port"], info.get("password")):
            return []
        problem = "does not answer PING with PONG"
    except OSError as exc:
        problem = f"cannot be reached ({exc})"
    return [Gone("redis", f"redis at {where} {problem}")]


def _ports(session: Session) -> list[Gone]:
    """Each published port of PostgreSQL and Redis still accepts a connection."""
    from .workspace import endpoints

    gone = []
    for service, endpoint in zip(("postgres", "redis"), endpoints(session), strict=True):
        if endpoint is None:
            continue
        try:
            socket.create_connection((endpoint.host, endpoint.port), timeout=CONNECT_TIMEOUT).close()
        except OSError as exc:
            gone.append(Gone(service, f"{service} at {endpoint.host}:{endpoint.port} does not accept connections ({exc})"))
    return gone


def _nothing(session: Session) -> list[Gone]:
    return []


_BACKENDS: dict[str, Callable[[Session], list[Gone]]] = {"native": _native, "docker": _docker, "external": _external}


# -- the database -------------------------------------------------------------------

def _database(session: Session) -> list[Gone]:
    """The environment's database and its template still exist (asked from the server's maintenance database)."""
    from .provision.database import connect
    from .workspace import endpoints, template_of

    pg, _ = endpoints(session)
    if pg is None:
        return []
    wanted = list(dict.fromkeys([pg.database, template_of(session, pg).database]))
    where = f"{pg.host}:{pg.port}"
    admin = pg.admin_url
    if session.backend == "native" and session.resources.get("run_dir"):
        from .services.postgres import admin_socket_url

        admin = admin_socket_url(session.resources["run_dir"], pg.port)  # its socket: no password exchange
    try:
        with connect(admin, connect_timeout=CONNECT_TIMEOUT) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (wanted,)).fetchall()
    except Exception as exc:  # noqa: BLE001 - psycopg's OperationalError and its kin: the server is the finding
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [Gone("postgres", f"postgres at {where} does not answer ({first})")]
    found = {row[0] for row in rows}
    return [Gone("database", f"the database {name} on {where} no longer exists (dropped, perhaps by a test)")
            for name in wanted if name not in found]


