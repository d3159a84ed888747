"""Host ports: is one free, who holds it, and a free one that cannot collide.

Ports chosen automatically come from below the kernel's ephemeral range, so a
client polling a server that is not up yet can never connect to itself.
"""

from __future__ import annotations

import errno
import os
import random
import socket

from .errors import PortInUse

HOST = "127.0.0.1"
_AUTO_LOW = 20000


def is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """A free port in [20000, start of the ephemeral range)."""
    high = ephemeral_low()
    low = _AUTO_LOW if high > _AUTO_LOW + 1000 else 1024
    for _ in range(200):
        port = random.randrange(low, high)
        if port not in avoid and is_free(port):
            return port
    raise PortInUse(f"no free port found between {low} and {high}; free some ports or set one explicitly", 0)


def resolve(service: str, requested: int, strict: bool, avoid: set[int] | frozenset[int] = frozenset()) -> int:
    """The port a service will use: ``requested`` if free, else fail (strict) or pick another."""
    if requested == 0:
        return free_port(avoid)
    if requested not in avoid and is_free(requested):
        return requested
    who = holder(requested)
    held = f" (held by {who})" if who else ""
    if strict:
        raise PortInUse(
            f"{service}: port {requested} on {HOST} is already in use{held}. envkit never runs tests against a "
            f"server it did not start: stop that process, or set {service}.port to another port, 0 or 'auto'",
            requested,
        )
    port = free_port(avoid)
    import logging

    logging.getLogger("envkit").warning("%s: default port %d is taken%s; using %d instead", service, requested, held, port)
    return port


def holder(port: int) -> str | None:
    """'pid N (name)' of the process listening on ``port``, where /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                next(fh)
                for line in fh:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(parts[9])
        except (OSError, StopIteration):
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    with open(f"/proc/{pid}/comm") as fh:
                        return f"pid {pid} ({fh.read().strip()})"
        except OSError:
            continue
    return "another user's process" if inodes else None
