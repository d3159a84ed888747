"""User-defined services: ``[services.NAME]`` tables, checked once into :class:`ServiceSpec`.

    [services.minio]
    template = "minio.yml.j2"       # in the `templates` folder (or the project root)
    ports = [9000]                  # container ports published on 127.0.0.1
    probe = { http = "/minio/health/live" }   # or "tcp", { command = [...] }, { log = "regex" }, "health"
    vars = { user = "envkit" }      # passed to the template as `vars`
    [services.minio.exports]
    S3_ENDPOINT_URL = "http://{{ host }}:{{ port }}"

The docker backend renders the template, publishes the ports, waits on the
probe and tears the service down with the rest; see ``docs/docker.md``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .errors import ConfigError

PROBES = ("tcp", "http", "command", "log", "health")
RESERVED = ("postgres", "redis")
_KEYS = ("template", "ports", "probe", "exports", "vars", "image")


@dataclass(frozen=True)
class Probe:
    """How envkit decides a user service is ready (besides its health check, if it has one)."""

    kind: str = "health"  # tcp | http | command | log | health
    target: Any = None  # http: path; command: argv run in the container; log: a regex
    port: int | None = None  # tcp/http: the container port (default: the first published)


@dataclass(frozen=True)
class ServiceSpec:
    """One user-defined service."""

    name: str
    template: str
    ports: tuple[int, ...] = ()
    probe: Probe = field(default_factory=Probe)
    exports: dict[str, str] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    image: str | None = None  # informational; the template names the image


def specs(config: Config) -> list[ServiceSpec]:
    """The configured user services, in file order; a ConfigError names the key at fault."""
    return [_spec(name, table, config.source) for name, table in config.services.items()]


def _spec(name: str, table: Any, source: str) -> ServiceSpec:
    where = f"services.{name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(f"{source}: [{where}]: a service name must be lowercase letters, digits, '-' or '_'")
    if name in RESERVED:
        raise ConfigError(f"{source}: [{where}]: {name!r} is built in; configure it under [{name}] instead")
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {where}.{unknown[0]}; known keys: {', '.join(_KEYS)}")
    template = table.get("template")
    if not isinstance(template, str) or not template:
        raise ConfigError(f"{source}: {where}.template must name a Jinja2 template, e.g. \"{name}.yml.j2\"")
    ports = table.get("ports", [])
    if not isinstance(ports, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in ports):
        raise ConfigError(f"{source}: {where}.ports must be a list of container port numbers, found {ports!r}")
    exports = table.get("exports", {})
    if not isinstance(exports, dict) or not all(isinstance(v, str) for v in exports.values()):
        raise ConfigError(f"{source}: {where}.exports must be a table of NAME = \"template\" strings")
    variables = table.get("vars", {})
    if not isinstance(variables, dict):
        raise ConfigError(f"{source}: {where}.vars must be a table")
    probe = _probe(table.get("probe", "health"), tuple(ports), source, where)
    return ServiceSpec(name, template, tuple(ports), probe, dict(exports), dict(variables), table.get("image"))


def _probe(value: Any, ports: tuple[int, ...], source: str, where: str) -> Probe:
    port = None
    if isinstance(value, str):
        kind, target = value, None
    elif isinstance(value, dict):
        value = dict(value)
        port = value.pop("port", None)
        kinds = [k for k in value if k in PROBES]
        if len(kinds) != 1 or len(value) != 1:
            raise ConfigError(f"{source}: {where}.probe must have exactly one of {', '.join(PROBES)} (and optionally port)")
        kind, target = kinds[0], value[kinds[0]]
    else:
        raise ConfigError(f"{source}: {where}.probe must be one of {', '.join(PROBES)} or a table like {{ http = \"/health\" }}")
    if kind not in PROBES:
        raise ConfigError(f"{source}: {where}.probe must be one of {', '.join(PROBES)}, found {kind!r}")
    if kind == "http" and target is None:
        target = "/"
    if kind == "http" and not (isinstance(target, str) and target.startswith("/")):
        raise ConfigError(f"{source}: {where}.probe.http must be a path starting with '/', found {target!r}")
    if kind == "command" and not (isinstance(target, list) and target and all(isinstance(a, str) for a in target)):
        raise ConfigError(f"{source}: {where}.probe.command must be a non-empty list of strings (run in the container)")
    if kind == "log":
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{source}: {where}.probe.log must be a regular expression matched against the log")
        try:
            re.compile(target)
        except re.error as exc:
            raise ConfigError(f"{source}: {where}.probe.log is not a valid regular expression: {exc}") from None
    if kind in ("tcp", "http"):
        if port is None and not ports:
            raise ConfigError(f"{source}: {where}.probe {kind} needs a published port: set {where}.ports = [PORT]")
        port = port if port is not None else ports[0]
        if port not in ports:
            raise ConfigError(f"{source}: {where}.probe.port {port} is not in {where}.ports {list(ports)}")
    return Probe(kind, target, port)
