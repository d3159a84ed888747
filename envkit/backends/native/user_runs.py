"""A ``[services.NAME]`` as the native backend runs it: a :class:`~envkit.backends.native.runs.Run` from its
ServiceSpec (its command, its probe, its exports).

Imported only when the configuration has user services (``envkit.services.user`` with it), so a start of
postgres and redis alone loads neither.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ... import ports
from ...config import Config
from ...services import probes
from ...services.user import ServiceEndpoint, ServiceSpec, binary, context, endpoint, render
from ...state import Session
from .runs import Run


class UserRun(Run):
    __slots__ = ("command", "config", "data_dir", "log_file", "session", "spec")

    def __init__(self, name: str, port: int, strict: bool, *, spec: ServiceSpec, config: Config, session: Session,
                 data_dir: Path, log_file: Path, command: str, **common: Any) -> None:
        super().__init__(name, port, strict, **common)
        self.spec = spec
        self.config = config
        self.session = session
        self.data_dir = data_dir
        self.log_file = log_file
        self.command = command  # command[0], found

    def _ctx(self) -> dict[str, Any]:
        return context(self.spec, ports.HOST, self.ports, self.config.project, password=self.session.password,
                       data_dir=str(self.data_dir),
                       run_dir=str(self.data_dir.parent.parent))

    def prepare(self) -> None:
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
