"""The one readiness check every contender is timed to: Postgres answers a query, Redis answers PING with PONG.

Both over TCP from the host, as tests connect. psycopg is imported by the
runner before its clock starts, for every contender alike.
"""

from __future__ import annotations

import socket
import time
from typing import Any


def libpq(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as a libpq one."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


def postgres(conninfo: str, query: str = "SELECT 1", **kwargs: Any) -> Any:
    import psycopg

    with psycopg.connect(libpq(conninfo), connect_timeout=5, **kwargs) as conn:
        return conn.execute(query).fetchone()[0]  # type: ignore[index]


def redis(host: str, port: int, password: str | None = None) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        if password:
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
            sock.recv(64)
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        answer = sock.recv(64)
    if not answer.startswith(b"+PONG"):
        raise RuntimeError(f"redis at {host}:{port} answered {answer!r} to PING")


def redis_url(url: str) -> tuple[str, int]:
    hostport = url.split("://", 1)[1].split("@")[-1].split("/")[0]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def wait(check: Any, timeout: float = 60.0, interval: float = 0.002) -> float:
    """Poll ``check`` every ``interval`` s until it passes; returns when it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return time.perf_counter()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)
