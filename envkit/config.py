"""Configuration, built once: CLI > ``ENVKIT_*`` environment > file > defaults.

The file is ``envkit.toml`` or the ``[tool.envkit]`` table of ``pyproject.toml``,
found by walking up from the working directory. Its folder is the project
directory, ``Config.root`` (the working directory when none is found): the
environment's state, ``.env.test`` and name belong to it, and relative paths in
the settings are resolved against it. ``config_file`` (``-c``) replaces the
settings only; the root is still the one found from ``start``. Everything else
in envkit receives a frozen :class:`Config` and never reads ``os.environ`` itself.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .registry import AUTO, BACKENDS
from .registry import MIGRATION_KINDS as KINDS

log = logging.getLogger("envkit")

#: The choices of ``backend`` and ``migrations.kind``: the registries' names, and auto.
BACKEND_NAMES = (AUTO, *BACKENDS)
MIGRATION_KINDS = (AUTO, *KINDS)
DIAGNOSTICS_MODES = ("on-failure", "always", "never")
ASYNC_DRIVERS = ("auto", "asyncpg", "psycopg")


@dataclass(frozen=True)
class PostgresConfig:
    """The PostgreSQL service."""

    enabled: bool = True
    #: None: 5433, or a free port if that is taken; 0 or "auto": a free port; N: exactly N.
    port: int | str | None = None
    user: str = "envkit"
    password: str | None = None  # generated per environment when unset
    database: str | None = None  # default: "<project>_test"
    image: str = "postgres:16-alpine"  # docker backend
    bindir: str | None = None  # native backend: directory holding initdb and postgres
    url: str | None = None  # external backend: an admin URL of a running server
    settings: dict[str, str] = field(default_factory=dict)  # extra server settings
    allow_hosts: list[str] = field(default_factory=list)  # non-loopback hosts envkit may write to
    #: the asyncio driver of async_url, async_db_session, envkit_async_engine and async seed hooks;
    #: auto: asyncpg when it is installed, else psycopg (3, async)
    async_driver: str = "auto"


@dataclass(frozen=True)
class RedisConfig:
    """The Redis service."""

    enabled: bool = True
    port: int | str | None = None
    db: int = 0
    image: str = "redis:7-alpine"
    server: str | None = None  # native backend: path of redis-server
    url: str | None = None  # external backend
    allow_hosts: list[str] = field(default_factory=list)  # non-loopback hosts whose db envkit may flush
    allow_flush: bool = False  # external backend: may envkit use (and empty) an index that already holds keys


@dataclass(frozen=True)
class MigrationsConfig:
    """How the database schema is created."""

    kind: str = "auto"  # auto: alembic when alembic.ini exists, else none
    alembic_ini: str = "alembic.ini"
    directory: str = "migrations"  # kind = "sql": *.sql applied in name order
    target: str | None = None  # kind = "metadata": "module:attr" (MetaData or declarative base)
    command: list[str] = field(default_factory=list)  # kind = "command"
    schema: str | None = None  # create and migrate into this schema


@dataclass(frozen=True)
class SeedConfig:
    """Users and data loaded after migrations."""

    file: str | None = None  # TOML or YAML with [[users]]
    users: list[dict[str, Any]] = field(default_factory=list)  # inline users
    table: str = "users"
    password_column: str = "password_hash"
    columns: dict[str, str] = field(default_factory=dict)  # seed key -> column name
    generate: dict[str, str] = field(default_factory=dict)  # column -> uuid4 | now
    bcrypt_rounds: int = 4
    sql: list[str] = field(default_factory=list)  # SQL files run after the users
    hook: str | None = None  # "module:function", sync or async: given a connection or session (envkit.provision.hook)


@dataclass(frozen=True)
class Config:
    """Everything one environment needs to know, resolved."""

    root: Path
    project: str
    source: str = "defaults"  # the file the settings came from, for messages
    backend: str = "auto"
    state_dir: str = ".envkit"
    env_files: list[str] = field(default_factory=list)  # dotenv files read into the environment
    dotenv: str | None = ".env.test"  # dotenv file written for tools that read one
    timeout: float = 30.0
    cache: bool = True
    cache_dir: str | None = None
    cache_max_mb: int = 1024
    cache_spare: bool = True  # native: keep a copy of the cached cluster on tmpfs for the next start (envkit.backends.native.spares)
    run_dir: str | None = None  # native: the folder run directories are made in; default /dev/shm, else the temp dir
    keep: bool = False
    keep_on_failure: bool = False
    allow_unsafe: bool = False  # let the guard pass databases that do not look disposable (logged)
    diagnostics: str = "on-failure"  # write .envkit/diagnostics/: on-failure, always or never
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    migrations: MigrationsConfig = field(default_factory=MigrationsConfig)
    seed: SeedConfig = field(default_factory=SeedConfig)
    env: dict[str, str] = field(default_factory=dict)  # extra exports, Jinja2 templates
    host: str | None = None  # host in connection URLs; default: 127.0.0.1, or the remote Docker engine's host
    templates: str | None = None  # docker backend: folder of user templates, searched before envkit's own
    services: dict[str, dict[str, Any]] = field(default_factory=dict)  # docker backend: [services.NAME], see envkit.services
    watchdog: bool = True  # a detached process that tears the environment down if envkit is killed
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def database(self) -> str:
        return self.postgres.database or f"{_identifier(self.project)}_test"

    @property
    def name(self) -> str:
        """A name unique to this checkout: ``<project>-<hash of the root path>``."""
        digest = hashlib.sha1(str(self.root).encode()).hexdigest()[:6]
        return f"{_identifier(self.project).replace('_', '-')}-{digest}"

    @property
    def state_path(self) -> Path:
        return self.root / self.state_dir

    def path(self, value: str) -> Path:
        """Resolve a path from the config against the project root."""
        return (self.root / value).resolve()

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type] = {
    "postgres": PostgresConfig,
    "redis": RedisConfig,
    "migrations": MigrationsConfig,
    "seed": SeedConfig,
}
# Environment variables with names of their own, besides ENVKIT_<SECTION>_<KEY>.
_ENV_ALIASES = {"ENVKIT_PG_BINDIR": ("postgres", "bindir")}
# ENVKIT_* names that are not settings: what envkit exports to the child, markers, the plugin's switch.
_ENV_OTHERS = {"ENVKIT_NAME", "ENVKIT_STATE_FILE", "ENVKIT_USERS_FILE", "ENVKIT_SCHEMA", "ENVKIT_SESSION",
               "ENVKIT_STARTED_BY", "ENVKIT_REQUIRE", "ENVKIT_REDIS_PREFIX", "ENVKIT_PYTEST_RUN"}
_NOT_FROM_ENV = {"root", "source", "environ", "postgres", "redis", "migrations", "seed", "env", "services"}


def load(
    start: Path | str | None = None,
    *,
    config_file: Path | str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build the configuration for the project containing ``start``.

    ``overrides`` are dotted keys (``"postgres.port"``) from the command line;
    ``environ`` defaults to ``os.environ`` and is the only place it is read.
    """
    env = dict(os.environ if environ is None else environ)
    here = Path(start or Path.cwd()).resolve()
    found, table = _discover(here)
    root = found.parent if found else here  # the project directory: -c changes the settings, never this
    path = found
    if config_file is not None:
        path = _explicit(here, config_file)
        table = _table(path)
    source = str(path) if path else "defaults"
    data = _deep_copy(table)

    for name in data.get("env_files", []) or []:
        env = {**_read_dotenv(root / str(name), source), **env}

    _apply_env(data, env)
    for dotted, value in (overrides or {}).items():
        _set(data, dotted.split("."), value)

    project = data.pop("project", None) or _project_name(root)
    return _build(Config, data, source, "", root=root, project=str(project), source=source, environ=env)


def _explicit(here: Path, config_file: Path | str) -> Path:
    path = (here / config_file).resolve()
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing envkit.toml or pyproject.toml")
    return path


def _discover(here: Path) -> tuple[Path | None, dict[str, Any]]:
    """The first envkit.toml, or pyproject.toml with [tool.envkit] or [project], from ``here`` upwards."""
    for folder in (here, *here.parents):
        for candidate in (folder / "envkit.toml", folder / "pyproject.toml"):
            if candidate.is_file():
                table = _table(candidate)
                if candidate.name == "envkit.toml" or table or _has_project(candidate):
                    return candidate, table
    return None, {}


def _table(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    if path.name == "pyproject.toml":
        table = doc.get("tool", {}).get("envkit", {})
        if "project" not in table and isinstance(doc.get("project"), dict) and doc["project"].get("name"):
            table = {"project": doc["project"]["name"], **table}
        return table
    return doc


def _has_project(path: Path) -> bool:
    try:
        return "project" in tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError:
        return False


def _read_dotenv(path: Path, source: str) -> dict[str, str]:
    if not path.is_file():
        raise ConfigError(f"{source}: env_files names {path}, which does not exist; create it or remove it from env_files")
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


_warned: set[str] = set()


def env_names() -> set[str]:
    """Every ``ENVKIT_*`` name envkit reads or sets."""
    names = {f"ENVKIT_{n.upper()}" for n in {f.name for f in dataclasses.fields(Config)} - _NOT_FROM_ENV | {"project"}}
    for section, cls in _SECTIONS.items():
        names |= {f"ENVKIT_{section}_{f.name}".upper() for f in dataclasses.fields(cls)}
    return names | set(_ENV_ALIASES) | _ENV_OTHERS


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith("ENVKIT_"):
            continue
        if name in _ENV_ALIASES:
            _set(data, list(_ENV_ALIASES[name]), value, from_env=name)
            continue
        rest = name[len("ENVKIT_"):].lower()
        section, _, key = rest.partition("_")
        if section in _SECTIONS and key in {f.name for f in dataclasses.fields(_SECTIONS[section])}:
            _set(data, [section, key], value, from_env=name)
        elif rest in {f.name for f in dataclasses.fields(Config)} - _NOT_FROM_ENV or rest == "project":
            _set(data, [rest], value, from_env=name)
        elif name not in _ENV_OTHERS and name not in _warned:
            _warned.add(name)  # once per process, however often the config is loaded
            close = difflib.get_close_matches(name, sorted(env_names()), n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]}?" if close else "; envkit ignores it (README: Configuration)"
            log.warning("the environment sets %s, which is no envkit setting%s", name, hint)


def _set(data: dict[str, Any], keys: list[str], value: Any, from_env: str | None = None) -> None:
    for key in keys[:-1]:
        data = data.setdefault(key, {})
    data[keys[-1]] = _EnvValue(value, from_env) if from_env else value


class _EnvValue(str):
    """A string from the environment: converted to the field's type when built."""

    def __new__(cls, value: str, variable: str) -> _EnvValue:
        obj = super().__new__(cls, value)
        obj.variable = variable  # type: ignore[attr-defined]
        return obj


def _build(cls: type, data: Mapping[str, Any], where_from: str, prefix: str, **fixed: Any) -> Any:
    source = where_from
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: [{prefix.rstrip('.')}] must be a table, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in fixed and f.name not in ("root", "source", "environ")]
    kwargs: dict[str, Any] = dict(fixed)
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{source}: unknown key {where!r}{hint}")
        expected = hints[key]
        section = _SECTIONS.get(key) if not prefix else None
        kwargs[key] = _build(section, value, source, f"{key}.") if section else _convert(value, expected, source, where)
    config = cls(**kwargs)
    _validate(config, source)
    return config


def _convert(value: Any, expected: Any, source: str, where: str) -> Any:
    origin = typing.get_origin(expected)
    options = typing.get_args(expected) if origin in (typing.Union, types.UnionType) else (expected,)
    variable = getattr(value, "variable", None)
    for option in options:
        result = _try(value, option, variable is not None)
        if result is not _FAIL:
            return result
    names = " or ".join(_type_name(o) for o in options)
    if variable:  # an environment variable is always a string: say what it holds, not its type
        forms = " (1/0, true/false, yes/no, on/off)" if bool in options else ""
        raise ConfigError(f"${variable} (the setting {where}) must be {names}{forms}, found {str(value)!r}; "
                          "fix or unset the variable")
    raise ConfigError(f"{source}: {where} must be {names}, found {type(value).__name__} {value!r}")


_FAIL = object()


def _try(value: Any, option: Any, from_env: bool) -> Any:
    base = typing.get_origin(option) or option
    if option is type(None):
        return None if value is None else _FAIL
    if base is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
            return value.lower() in ("1", "true", "yes", "on")
        return _FAIL
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and re.fullmatch(r"-?\d+", value):
            return int(value)
        return _FAIL
    if base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                return _FAIL
        return _FAIL
    if base is str:
        return str(value) if isinstance(value, str) else _FAIL
    if base is list:
        if from_env:
            return _env_list(value)
        return list(value) if isinstance(value, list) else _FAIL
    if base is dict:
        if not (isinstance(value, Mapping) and all(isinstance(k, str) for k in value)):
            return _FAIL
        if typing.get_args(option)[1] is str:
            if not all(isinstance(v, (str, int, float, bool)) for v in value.values()):
                return _FAIL
            return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
        return dict(value)
    return _FAIL


def _env_list(value: str) -> Any:
    """A list from the environment: a JSON array (``["sh", "-c", "a, b"]``), else comma-separated items."""
    if value.lstrip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            return _FAIL
        if isinstance(items, list) and all(isinstance(i, (str, int, float)) and not isinstance(i, bool) for i in items):
            return [str(i) for i in items]
        return _FAIL
    return [part.strip() for part in value.split(",") if part.strip()]


def _type_name(option: Any) -> str:
    base = typing.get_origin(option) or option
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table", type(None): "unset"}.get(base, str(option))


def _validate(config: Any, source: str) -> None:
    def choice(where: str, value: str, allowed: tuple[str, ...]) -> None:
        if value not in allowed:
            close = difflib.get_close_matches(value, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: {where} must be one of {', '.join(allowed)}, found {value!r}{hint}")

    if isinstance(config, Config):
        choice("backend", config.backend, BACKEND_NAMES)
        choice("diagnostics", config.diagnostics, DIAGNOSTICS_MODES)
        if not 0 < config.timeout < float("inf"):  # NaN fails both comparisons
            raise ConfigError(f"{source}: timeout must be a positive number of seconds, found {config.timeout}")
        if config.cache_max_mb < 0:
            raise ConfigError(f"{source}: cache_max_mb must be 0 or more megabytes, found {config.cache_max_mb}")
    elif isinstance(config, MigrationsConfig):
        choice("migrations.kind", config.kind, MIGRATION_KINDS)
        if config.kind == "metadata" and not config.target:
            raise ConfigError(f"{source}: migrations.kind = 'metadata' needs migrations.target = 'module:attr'")
        if config.kind == "command" and not config.command:
            raise ConfigError(f"{source}: migrations.kind = 'command' needs migrations.command = [...]")
    elif isinstance(config, (PostgresConfig, RedisConfig)):
        section = "postgres" if isinstance(config, PostgresConfig) else "redis"
        if isinstance(config, PostgresConfig):
            choice("postgres.async_driver", config.async_driver, ASYNC_DRIVERS)
        port = config.port
        if isinstance(port, str) and port != "auto" and not port.isdigit():
            raise ConfigError(f"{source}: {section}.port must be a port number, 0 or 'auto', found {port!r}")
        if port is not None and port != "auto" and not 0 <= int(port) <= 65535:
            raise ConfigError(f"{source}: {section}.port must be between 0 and 65535 (0: any free port), found {port}")
        if isinstance(config, RedisConfig) and config.db < 0:
            raise ConfigError(f"{source}: redis.db must be a database index, 0 or more (a default server has 0 to "
                              f"15), found {config.db}")
    elif isinstance(config, SeedConfig):
        if not 4 <= config.bcrypt_rounds <= 31:
            raise ConfigError(f"{source}: seed.bcrypt_rounds must be between 4 and 31, found {config.bcrypt_rounds}")
        for column, kind in config.generate.items():
            if kind not in ("uuid4", "now"):
                raise ConfigError(f"{source}: seed.generate.{column} must be 'uuid4' or 'now', found {kind!r}")


def _project_name(root: Path) -> str:
    return root.name or "envkit"


def _identifier(name: str) -> str:
    cleaned = re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")
    return cleaned or "envkit"


def _deep_copy(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def port_request(value: int | str | None, default: int) -> tuple[int, bool]:
    """Return ``(port, strict)``: 0 means any free port; strict means fail if taken."""
    if value is None:
        return default, False
    if value == "auto":
        return 0, False
    return int(value), int(value) != 0
