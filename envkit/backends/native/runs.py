"""Each service as the native backend runs it: one :class:`Run` per service, built from its service module.

    PostgresRun   envkit.services.postgres: a cluster (cached, or a snapshot), `postgres -D`, a socket connection
    RedisRun      envkit.services.redis: `redis-server` in the foreground, PING
    UserRun       a [services.NAME] ServiceSpec: its command, its probe, its exports (in .user_runs: imported only
                  for a configuration that has user services)

The backend spawns every run of a wave (:func:`envkit.services.waves`) side by side, waits
for all of them at once, and turns each into its endpoint. It never asks which service a run is.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import ports
from ...services import PostgresEndpoint, RedisEndpoint
from ...services import postgres as postgres_service
from ...services import redis as redis_service

if TYPE_CHECKING:
    from ...config import Config
    from ...proc import RunAs
    from ...services import ServiceEndpoint
    from .binaries import PgBinaries, RedisBinary

POLL_MAX = 0.01  # seconds: the longest pause between two readiness checks of a local server


class Run:
    """What the backend needs of one service: where it listens, how it starts, how it answers, what it becomes.

    Plain classes, not dataclasses: a native start imports this module, and making four dataclasses cost ~3 ms.
    """

    __slots__ = (
        "cwd",
        "depends_on",
        "env",
        "facts",
        "name",
        "poll",
        "port",
        "ports",
        "run_as",
        "stop_signal",
        "strict",
    )

    def __init__(self, name: str, port: int = 0, strict: bool = False, *, depends_on: tuple[str, ...] = (),
                 run_as: RunAs | None = None, stop_signal: int = signal.SIGTERM, poll: float = POLL_MAX,
                 env: dict[str, str] | None = None, cwd: Path | None = None, facts: dict[str, Any] | None = None,
                 ports: dict[str, int] | None = None) -> None:
        self.name = name
        self.port = port  # the host port envkit chose (0: the service has none)
        self.strict = strict  # the port was pinned in the config: never moved to another
        self.depends_on = depends_on
        self.run_as = run_as  # the servers' user, when envkit runs as root
        self.stop_signal = stop_signal
        self.poll = poll
        self.env = env  # None: the servers' minimal environment
        self.cwd = cwd  # None: the run directory
        self.facts = facts or {}  # for status and doctor: the binary, its version, ...
        self.ports = ports or {}  # every port, by name (user services)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, port={self.port})"

    def prepare(self) -> None:
        """Make what must exist before the first start (a data directory)."""

    def argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def check(self, port: int) -> bool:
        """One readiness check; the backend repeats it (and first checks the process still runs)."""
        raise NotImplementedError

    def what(self) -> str:
        """What :meth:`check` waits for, in words."""
        return "accepting connections"

    def endpoint(self, port: int) -> PostgresEndpoint | RedisEndpoint | ServiceEndpoint:
        raise NotImplementedError


class PostgresRun(Run):
    __slots__ = ("bins", "config", "password", "prepare_cluster", "restored", "run_dir")

    def __init__(self, name: str, port: int, strict: bool, *, bins: PgBinaries, run_dir: Path, config: Config,
                 password: str, prepare_cluster: Callable[[], bool], **common: Any) -> None:
        super().__init__(name, port, strict, **common)
        self.bins = bins
        self.run_dir = run_dir
        self.config = config
        self.password = password
        self.prepare_cluster = prepare_cluster  # the backend's: cache, snapshot or initdb; True: restored
        self.restored = False

    def prepare(self) -> None:
        self.restored = self.prepare_cluster()

    @property
    def data(self) -> Path:
        return self.run_dir / "pgdata"

    def argv(self, port: int) -> list[str]:
        settings = postgres_service.native_settings(ports.HOST, port, str(self.run_dir), self.config.postgres.settings)
        return postgres_service.server_argv(self.bins["postgres"], str(self.data), settings)

    def check(self, port: int) -> bool:
        import psycopg

        if not (self.run_dir / f".s.PGSQL.{port}").exists():
            return False
        with psycopg.connect(postgres_service.admin_socket_url(str(self.run_dir), port), connect_timeout=2,
                             autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True

    def endpoint(self, port: int) -> PostgresEndpoint:
        return PostgresEndpoint(host=ports.HOST, port=port, user=self.config.postgres.user, password=self.password,
                                database=self.config.database,
                                admin_url=postgres_service.admin_socket_url(str(self.run_dir), port),
                                version=self.bins.version)


class RedisRun(Run):
    __slots__ = ("binary", "db", "workdir")

    def __init__(self, name: str, port: int, strict: bool, *, binary: RedisBinary, workdir: Path, db: int = 0,
                 **common: Any) -> None:
        super().__init__(name, port, strict, **common)
        self.binary = binary
        self.workdir = workdir
        self.db = db

    def prepare(self) -> None:
        self.workdir.mkdir()
        if self.run_as:
            os.chown(self.workdir, self.run_as.uid, self.run_as.gid)

    def argv(self, port: int) -> list[str]:
        return redis_service.native_argv(str(self.binary.path), port, ports.HOST, str(self.workdir), self.binary.version)

    def what(self) -> str:
        return "PING answered with PONG"

    def check(self, port: int) -> bool:
        return redis_service.ping(ports.HOST, port)

    def endpoint(self, port: int) -> RedisEndpoint:
        return RedisEndpoint(ports.HOST, port, self.db, version=self.binary.version)
