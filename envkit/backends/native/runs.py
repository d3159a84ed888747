"""Each service as the native backend runs it: one :class:`Run` per service, built from its service module.

    PostgresRun   envkit.services.postgres: a cluster (cached, or a snapshot), `postgres -D`, a socket connection
    RedisRun      envkit.services.redis: `redis-server` in the foreground, PING
    UserRun       a [services.NAME] ServiceSpec: its command, its probe, its exports

The backend spawns every run of a wave (:func:`envkit.services.waves`) side by side, waits
for all of them at once, and turns each into its endpoint. It never asks which service a run is.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import ports
from ...config import Config
from ...proc import RunAs
from ...services import PostgresEndpoint, RedisEndpoint, ServiceEndpoint, ServiceSpec, probes
from ...services import postgres as postgres_service
from ...services import redis as redis_service
from ...services.user import binary, context, endpoint, render
from ...state import Session

if TYPE_CHECKING:
    from .binaries import PgBinaries, RedisBinary

POLL_MAX = 0.01  # seconds: the longest pause between two readiness checks of a local server


@dataclass
class Run:
    """What the backend needs of one service: where it listens, how it starts, how it answers, what it becomes."""

    name: str
    port: int = 0  # the host port envkit chose (0: the service has none)
    strict: bool = False  # the port was pinned in the config: never moved to another
    depends_on: tuple[str, ...] = ()
    run_as: RunAs | None = None  # the servers' user, when envkit runs as root
    stop_signal: int = signal.SIGTERM
    poll: float = POLL_MAX
    env: dict[str, str] | None = None  # None: the servers' minimal environment
    cwd: Path | None = None  # None: the run directory
    facts: dict[str, Any] = field(default_factory=dict)  # for status and doctor: the binary, its version, ...
    ports: dict[str, int] = field(default_factory=dict)  # every port, by name (user services)

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


@dataclass
class PostgresRun(Run):
    bins: PgBinaries | None = None
    run_dir: Path = Path("/nonexistent")
    config: Config | None = None
    password: str = ""
    prepare_cluster: Callable[[], bool] | None = None  # the backend's: cache, snapshot or initdb; True: restored
    restored: bool = False

    def prepare(self) -> None:
        assert self.prepare_cluster is not None
        self.restored = self.prepare_cluster()

    @property
    def data(self) -> Path:
        return self.run_dir / "pgdata"

    def argv(self, port: int) -> list[str]:
        assert self.bins is not None and self.config is not None
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
        assert self.bins is not None and self.config is not None
        return PostgresEndpoint(host=ports.HOST, port=port, user=self.config.postgres.user, password=self.password,
                                database=self.config.database,
                                admin_url=postgres_service.admin_socket_url(str(self.run_dir), port),
                                version=self.bins.version)


@dataclass
class RedisRun(Run):
    binary: RedisBinary | None = None
    workdir: Path = Path("/nonexistent")
    db: int = 0

    def prepare(self) -> None:
        self.workdir.mkdir()
        if self.run_as:
            os.chown(self.workdir, self.run_as.uid, self.run_as.gid)

    def argv(self, port: int) -> list[str]:
        assert self.binary is not None
        return redis_service.native_argv(str(self.binary.path), port, ports.HOST, str(self.workdir), self.binary.version)

    def what(self) -> str:
        return "PING answered with PONG"

    def check(self, port: int) -> bool:
        return redis_service.ping(ports.HOST, port)

    def endpoint(self, port: int) -> RedisEndpoint:
        assert self.binary is not None
        return RedisEndpoint(ports.HOST, port, self.db, version=self.binary.version)


@dataclass
class UserRun(Run):
    spec: ServiceSpec = field(default_factory=lambda: ServiceSpec("?"))
    config: Config | None = None
    session: Session | None = None
    data_dir: Path = Path("/nonexistent")
    log_file: Path = Path("/nonexistent")
    command: str = ""  # command[0], found

    def _ctx(self) -> dict[str, Any]:
        assert self.config is not None
        assert self.session is not None
        return context(self.spec, ports.HOST, self.ports, self.config.project, password=self.session.password,
                       data_dir=str(self.data_dir),
                       run_dir=str(self.data_dir.parent.parent))

    def prepare(self) -> None:
        assert self.config is not None and self.session is not None
        self.data_dir.mkdir(parents=True, mode=0o700)
        # as this user, not the servers' one: a service from the venv (a wheel's binary) must reach the venv
        self.env = user_env(self.config, self.session, self.data_dir)
        ctx = self._ctx()
        self.env.update({k: render(v, ctx, f"{self.spec.where} environment.{k}")
                         for k, v in self.spec.environment.items()})
        self.cwd = self.data_dir

    def argv(self, port: int) -> list[str]:
        ctx = self._ctx()
        return [self.command, *(render(a, ctx, f"{self.spec.where} command") for a in self.spec.command[1:])]

    @property
    def _kind(self) -> str:
        kind = self.spec.probe.kind
        return kind if kind != "health" else ("tcp" if self.ports else "running")

    def what(self) -> str:
        probe, port = self.spec.probe, self._probe_port
        return {"tcp": f"port {port} accepts connections", "http": f"GET {probe.target} on port {port} answers",
                "command": f"{' '.join(probe.target or [])} exits 0", "log": f"its log matches {probe.target!r}",
                "running": "its process runs"}[self._kind]

    @property
    def _probe_port(self) -> int:
        return self.ports[self.spec.port_of(self.spec.probe.port)] if self.ports else 0

    def check(self, port: int) -> bool:
        kind, probe = self._kind, self.spec.probe
        if kind == "tcp":
            return probes.tcp(ports.HOST, self._probe_port)
        if kind == "http":
            return probes.http(ports.HOST, self._probe_port, str(probe.target))
        if kind == "command":
            ctx = self._ctx()
            return probes.command([render(a, ctx, f"{self.spec.where} probe") for a in probe.target], self.env,
                                  str(self.data_dir))
        if kind == "log":
            return probes.log(self.log_file, str(probe.target))
        return True

    def endpoint(self, port: int) -> ServiceEndpoint:
        assert self.config is not None
        assert self.session is not None
        return endpoint(self.spec, ports.HOST, self.ports, self.config.project, password=self.session.password,
                        data_dir=str(self.data_dir))


def user_run(config: Config, session: Session, spec: ServiceSpec, run_dir: Path, taken: set[int]) -> UserRun:
    """A user service on free ports (one per named port), in a data directory of its own."""
    host_ports = {}
    for name in spec.ports:
        host_ports[name] = ports.free_port(avoid=taken)
        taken.add(host_ports[name])
    command = binary(spec, config.environ)
    return UserRun(spec.name, port=next(iter(host_ports.values()), 0), strict=True, depends_on=spec.depends_on,
                   ports=host_ports, facts={"binary": command, **({"recipe": spec.recipe} if spec.recipe else {})},
                   spec=spec, config=config, session=session, data_dir=run_dir / "services" / spec.name,
                   log_file=run_dir / f"{spec.name}.log", command=command)


def user_env(config: Config, session: Session, data_dir: Path) -> dict[str, str]:
    """A user service's environment: this Python's bin first on PATH, a home of its own, envkit's marker."""
    path = os.pathsep.join([str(Path(sys.executable).parent), config.environ.get("PATH", os.defpath)])
    return {"PATH": path, "HOME": str(data_dir), "TMPDIR": str(data_dir), "TZ": "UTC", "LANG": "C.UTF-8",
            "ENVKIT_SESSION": session.label}
