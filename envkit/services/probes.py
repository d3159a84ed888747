"""Readiness probes that run on this machine, for any service on any backend."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def tcp(host: str, port: int, stays_open: bool = False) -> bool:
    """A TCP port that accepts a connection; with ``stays_open``, one that is not closed at once.

    Docker's port proxy accepts every connection and closes it at once while
    nothing listens in the container, so there an accepted connection alone
    proves nothing: an immediate EOF means "not yet".
    """
    with socket.create_connection((host, port), timeout=1) as sock:
        if not stays_open:
            return True
        sock.settimeout(0.15)
        try:
            return sock.recv(1) != b""
        except TimeoutError:
            return True


def http(host: str, port: int, path: str) -> bool:
    """``GET path`` answers with a status below 400."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status < 400
    finally:
        conn.close()


def command(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None) -> bool:
    """The command exits 0 (within 10 s)."""
    try:
        return subprocess.run(list(argv), env=dict(env) if env is not None else None, cwd=cwd, timeout=10,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def log(path: Path, pattern: str) -> bool:
    """The log file matches ``pattern``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return False
    return re.search(pattern, text, re.MULTILINE) is not None
