"""Redis, built in: its ports, endpoint, readiness probe and exports, and how it runs in a container."""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..config import Config
from .postgres import bracket

if TYPE_CHECKING:
    from .container import Container

NAME = "redis"
CONTAINER_PORT = 6379
DEFAULT_PORT = 6380
TEMPLATE = "services/redis.yml.j2"
EXPORTS = ("REDIS_URL",)
DATA = "/data"  # the official image's working directory and VOLUME


@dataclass(frozen=True)
class RedisEndpoint:
    """A Redis server and the database index envkit may use on it."""

    host: str
    port: int
    db: int = 0
    password: str | None = field(default=None, repr=False)
    owned: bool = True
    version: str = ""

    kind = NAME

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{bracket(self.host)}:{self.port}/{self.db}"

    def exports(self) -> dict[str, str]:
        return {"REDIS_URL": self.url}

    def context(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "db": self.db, "url": self.url}

    def record(self) -> dict[str, Any]:
        return {"kind": NAME, "host": self.host, "port": self.port, "db": self.db, "password": self.password,
                "owned": self.owned, "version": self.version}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> RedisEndpoint:
        return cls(host=data["host"], port=int(data["port"]), db=int(data.get("db", 0)), password=data.get("password"),
                   owned=bool(data.get("owned", True)), version=data.get("version", ""))


def ping(host: str, port: int, password: str | None = None) -> bool:
    """PING over a raw socket; only the literal PONG counts (a loading Redis answers an error)."""
    with socket.create_connection((host, port), timeout=1) as sock:
        if password:
            sock.sendall(f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n".encode())
            if not sock.recv(64).startswith(b"+OK"):
                return False
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def version(host: str, port: int) -> str:
    """The server's version from INFO, or "" when it cannot be asked."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            found = re.search(rb"redis_version:([\d.]+)", sock.recv(4096))
    except OSError:
        return ""
    return found.group(1).decode() if found else ""


def native_argv(binary: str, port: int, host: str, workdir: str, version: str) -> list[str]:
    """A local server on ``host:port`` that keeps nothing on disk, in the foreground."""
    argv = [binary, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no", "--dir", workdir,
            "--daemonize", "no"]
    if _at_least(version, (6, 2)):
        # a proc title overwrites /proc/<pid>/environ, and with it the ENVKIT_SESSION marker that
        # lets `envkit down` (another process) recognise this Redis and stop it
        argv += ["--set-proc-title", "no"]
    return argv


#: The container's command: nothing kept on disk (the data is thrown away with the container anyway).
CONTAINER_COMMAND = ("redis-server", "--save", "", "--appendonly", "no")


def _at_least(version: str, wanted: tuple[int, ...]) -> bool:
    parts = tuple(int(p) for p in version.split(".")[:len(wanted)] if p.isdigit())
    return len(parts) == len(wanted) and parts >= wanted


# -- in a container ------------------------------------------------------------
def container(config: Config, password: str) -> Container[RedisEndpoint] | None:
    """The official image (or one like it) as a container backend runs it; None when disabled. envkit's Redis
    takes no password: ``password`` is not used."""
    from .container import Container, Port, tmpfs_paths

    rd = config.redis
    if not rd.enabled:
        return None
    return Container(NAME, rd.image, {NAME: Port(CONTAINER_PORT, DEFAULT_PORT, rd.port)},
                     lambda host, ports: RedisEndpoint(host, ports[NAME], rd.db), TEMPLATE, compose_values(config),
                     tmpfs=lambda env, volumes: tmpfs_paths(volumes or [], DATA), probe=ready,
                     facts=lambda ep: {"image": rd.image, "version": ep.version}, healthcheck=True,
                     setting="redis.image")


def compose_values(config: Config) -> dict[str, Any]:
    """What ``services/redis.yml.j2`` renders with: a server that never writes its data to disk."""
    return {"command": list(CONTAINER_COMMAND)}


def ready(endpoint: RedisEndpoint) -> RedisEndpoint | None:
    """PONG (see :func:`ping`); the endpoint with the server's version."""
    if not ping(endpoint.host, endpoint.port, endpoint.password):
        return None
    return replace(endpoint, version=version(endpoint.host, endpoint.port))
