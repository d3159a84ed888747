"""How services run: one small class per backend, chosen by name.

    native    local processes from system binaries or the embedded wheels
    docker    Docker Compose with a rendered docker-compose.test.yml
    external  servers somebody else started (CI service containers)

``auto`` picks external when URLs are configured, docker when an engine
answers, native otherwise.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
from collections.abc import Mapping

from ..config import Config
from ..errors import BackendUnavailable
from ..registry import BACKENDS  # name -> "module:class", the one list of backends
from .base import Backend

__all__ = ["BACKENDS", "Backend", "by_name", "docker_reachable", "select"]

log = logging.getLogger("envkit")


def by_name(name: str) -> Backend:
    try:
        module, _, cls = BACKENDS[name].partition(":")
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r}; use one of {', '.join(BACKENDS)}") from None
    try:
        return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return]
    except ImportError as exc:
        raise BackendUnavailable(f"the {name} backend cannot be loaded: {exc}") from None


def select(config: Config) -> Backend:
    name = config.backend
    if name == "auto":
        if config.postgres.url or config.redis.url:
            name = "external"
        elif docker_reachable(config.environ):
            name = "docker"
        else:
            name = "native"
        log.debug("backend auto: chose %s", name)
    return by_name(name)


def docker_reachable(environ: Mapping[str, str], timeout: float = 0.5) -> bool:
    """Whether a Docker engine answers /_ping (a raw request: importing the SDK costs 0.2 s)."""
    from .docker.engine import locate  # DOCKER_HOST, else the current docker context, else the local socket

    host = locate(environ).url
    try:
        if host.startswith("unix://"):
            path = host[len("unix://"):]
            if not os.path.exists(path):
                return False
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(path)
        elif host.startswith("tcp://"):
            hostport = host[len("tcp://"):].rstrip("/")
            h, _, p = hostport.rpartition(":")
            sock = socket.create_connection((h, int(p)), timeout=timeout)
        else:
            return True  # ssh:// and others: let the docker backend try and report
        with sock:
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except (OSError, ValueError):
        return False
