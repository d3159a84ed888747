"""The docker backend: a rendered docker-compose.test.yml run with the Compose CLI.

    plan (ports, the images' data paths, labels) → render → compose up -d
    → wait (container state and health, host-side probes) → hand over
    … teardown: compose down -v --remove-orphans, then remove whatever still
    carries the session's label

Compose is always called with an explicit project name (``envkit-<session>``),
``-f`` and ``--project-directory``, in an environment without ``COMPOSE_*``,
so neither the user's shell nor a ``.env`` can point it elsewhere. Waiting,
logs and cleanup use the Docker SDK.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from ... import cache, ports, progress, watchdog
from ...config import DEFAULT_PG_PORT, DEFAULT_REDIS_PORT, Config, port_request
from ...errors import BackendUnavailable, PortInUse, ServiceFailed, TeardownIncomplete
from ...proc import run
from ...services import PostgresEndpoint, RedisEndpoint, ServiceSpec, specs
from ...services import redis as redis_service
from ...services.user import endpoint
from ...state import Session, write_private
from ..base import Running
from . import containers, engine, reaper, snapshots
from . import render as render_module
from .render import PG_CONTAINER_PORT, PGDATA, REDIS_CONTAINER_PORT, Health, Plan, postgres_tmpfs, render, tmpfs_paths

log = logging.getLogger("envkit")

COMPOSE_FILE = "docker-compose.test.yml"  # in the state directory
_PORT_RETRIES = 5  # a port taken between envkit's check and Docker's bind: move it, this many times at most
_STOP_TIMEOUT = "1"  # seconds compose gives a container to stop: the data is thrown away anyway
_PORT_ERROR = re.compile(r"(?:Bind for \S*?:(\d+) failed|listen tcp\d? \S*?:(\d+): bind: address already in use)")


class ComposeBackend:
    """Services as containers of one compose project per session."""

    name: ClassVar[str] = "docker"

    # -- start -------------------------------------------------------------
    def start(self, config: Config, session: Session, stack: ExitStack, snapshot: str | None) -> Running:
        where = engine.locate(config.environ, config.host)
        pool = ThreadPoolExecutor(1)
        connecting = pool.submit(engine.client, where, config.environ)  # the SDK is imported while compose starts things
        try:
            cli = engine.compose_cli(config.environ)
            user = specs(config)
            compose_file = config.state_path / COMPOSE_FILE
            compose_file.unlink(missing_ok=True)  # a previous run's: teardown must not act on it
            session.resources.update(
                compose={"project": f"envkit-{session.label}", "file": str(compose_file), "cli": cli,
                         "project_directory": str(config.root),
                         "env": {k: config.environ[k] for k in engine.ENGINE_VARIABLES if k in config.environ}},
                engine={"url": where.url, "context": where.context},
            )
            session.save()
            stack.callback(self.teardown, session)

            password = session.info.setdefault("password", config.postgres.password or secrets.token_urlsafe(18))
            docs = engine.Inspector(where, connecting)
            cached = self._find_snapshot(config, session, docs, snapshot)
            plan, movable = self._plan(config, session, where, docs, password)
            if cached:
                plan = dataclasses.replace(plan, entrypoints={"postgres": snapshots.waiting_entrypoint(
                    cached.entrypoint, config.timeout)})
            text = render(config, plan)
            if cached and not (cached.builtin_template or _waits(text)):
                log.warning("postgres: the postgres template does not render the snapshot's `entrypoint` (see envkit's "
                            "own services/postgres.yml.j2); starting without the cached snapshot")
                cached, plan = None, dataclasses.replace(plan, entrypoints={})
                text = render(config, plan)
            write_private(compose_file, text)
            for service in _services(config, user):
                progress.note(service, "starting container")
            self._up(session, connecting, engine.compose_env(config.environ),
                     _Mover(config, plan, movable, where, compose_file))
            client = connecting.result()
        finally:
            pool.shutdown(wait=False)
        found = containers.find(client.api, session.resources["compose"]["project"])
        session.resources["containers"] = found
        session.save()
        restored = None  # the restored snapshot's superuser password
        if cached:  # the container waits for its data: the critical path
            progress.note("postgres", "restoring the migrated and seeded snapshot")
            restored = snapshots.restore(cached.docker, engine.compose_env(config.environ), found["postgres"],
                                         cached.entry, cached.pgdata, session.users_file)
        try:  # while the containers start: environments of envkit processes that were killed, on this engine and host
            reaper.prune(client)
        except Exception as exc:  # noqa: BLE001 - reaping others must never stop this run
            log.warning("could not look for orphaned environments: %s", exc)
        running = self._wait(config, session, where, client.api, found, password, restored or password, user)
        running.restored = restored is not None
        return running

    def _find_snapshot(self, config: Config, session: Session, docs: engine.Inspector, key: str | None) -> _Snapshot | None:
        """Where this run's snapshot lives (recorded for :meth:`save_snapshot`); the entry when the cache holds it."""
        if not key or not config.postgres.enabled:
            return None
        docker = engine.docker_cli(config.environ)
        image = docs.image(config.postgres.image)
        if docker is None or image is None:  # no CLI to stream it with; an image compose has yet to pull
            return None
        pgdata = _image_env(image).get("PGDATA") or PGDATA
        template, template_text = snapshots.template(config)
        name = snapshots.entry_key(config, image, pgdata, template_text, key)
        session.resources["snapshot"] = {"entry": name, "pgdata": pgdata, "docker": docker}
        entry = cache.lookup(config, "snapshots", name)
        if entry is None:
            return None
        return _Snapshot(entry, pgdata, docker, (image.get("Config") or {}).get("Entrypoint"),
                         builtin_template=template is not None and template.parent.parent == render_module.builtin_templates())

    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        """Keep the freshly migrated and seeded data directory (an online backup) for the next run."""
        where = session.resources.get("snapshot")
        if not where or running.postgres is None:
            return
        t0 = time.perf_counter()
        try:
            snapshots.save(config, where["entry"], where["docker"], engine.compose_env(config.environ),
                           session.resources["containers"]["postgres"], where["pgdata"], running.postgres,
                           session.users_file)
        except Exception as exc:  # noqa: BLE001 - a snapshot only saves time: this run goes on (a tar error, a
            # server refusing the backup API, a full disk...), and says why the next one will not be faster
            log.warning("postgres: could not save a snapshot for the next run (%s); the next run migrates and seeds "
                        "again", str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__)
            return
        log.debug("postgres: snapshot %s saved in %.2f s", where["entry"], time.perf_counter() - t0)

    def _plan(self, config: Config, session: Session, where: engine.Engine, docs: engine.Inspector,
              password: str) -> tuple[Plan, set[str]]:
        """The plan, and the services whose host port envkit chose (not pinned): those may move if it is taken."""
        taken: set[int] = set()
        plan_ports: dict[str, dict[int, int | None]] = {}
        tmpfs: dict[str, list[str]] = {}
        movable = {name for name, value in (("postgres", config.postgres.port), ("redis", config.redis.port))
                   if not port_request(value, 0)[1]}
        if config.postgres.enabled:
            plan_ports["postgres"] = {PG_CONTAINER_PORT: _host_port("postgres", config.postgres.port, DEFAULT_PG_PORT,
                                                                    where, taken)}
            env, volumes = _image_paths(docs, config.postgres.image)
            tmpfs["postgres"] = postgres_tmpfs(config.postgres.image, env.get("PGDATA"), volumes) if volumes is not None \
                else postgres_tmpfs(config.postgres.image)
        if config.redis.enabled:
            plan_ports["redis"] = {REDIS_CONTAINER_PORT: _host_port("redis", config.redis.port, DEFAULT_REDIS_PORT,
                                                                    where, taken)}
            tmpfs["redis"] = tmpfs_paths(_image_paths(docs, config.redis.image)[1] or [], "/data")
        for spec in specs(config):
            plan_ports[spec.name] = {p: None for p in spec.ports.values()}
        modern = docs.at_least("1.44")  # Docker 25: start_interval, so checks are fast early and rare later
        health = Health(interval="1s" if modern else "250ms", start_interval="100ms" if modern else None,
                        start_period=f"{max(int(config.timeout), 1)}s")
        return Plan(labels=reaper.labels(config, session), password=password, bind=where.bind, ports=plan_ports,
                    tmpfs=tmpfs, health=health, image_volumes=lambda image: _image_paths(docs, image)[1] or []), movable

    def _up(self, session: Session, connecting: Future[Any], environ: dict[str, str], mover: _Mover) -> None:
        res = session.resources["compose"]
        # marked: a watchdog lets a `compose up` its dead owner left behind finish before tearing down
        env = {**environ, watchdog.STARTED_BY: session.label}
        result = run([*_base(res), "up", "-d"], env=env, check=False, timeout=600)
        legacy = engine.legacy_compose(res["env"], result.stdout) if result.returncode else None
        if legacy:
            res["cli"] = legacy
            session.save()
            result = run([*_base(res), "up", "-d"], env=env, check=False, timeout=600)
        port = _PORT_ERROR.search(result.stdout) if result.returncode else None
        for _ in range(_PORT_RETRIES):
            # another run published the port between envkit's check and Docker's bind (parallel runs on the
            # default ports): move the service to another free port; `up` recreates only the changed service
            # (its container never started) in the same project, so nothing is left behind
            if not port or not mover.move(int(port.group(1) or port.group(2))):
                break
            result = run([*_base(res), "up", "-d"], env=env, check=False, timeout=600)
            port = _PORT_ERROR.search(result.stdout) if result.returncode else None
        if result.returncode == 0:
            return
        output = result.stdout.strip()
        if port:
            number = int(port.group(1) or port.group(2))
            who = ports.holder(number) or "another process"
            raise PortInUse(f"docker could not publish port {number}: it is already in use (held by {who}); free it, "
                            f"or set the port to 0 or 'auto' (rendered compose file: {res['file']})\n{output}", number)
        api = connecting.result().api
        missing = missing_images(api, Path(res["file"]))
        if missing:
            raise ServiceFailed(pull_failure(missing, output), "compose", output)
        found = containers.find(api, res["project"])
        details = "\n\n".join(containers.diagnose(api, s, c) for s, c in found.items())
        raise ServiceFailed(f"docker compose up failed with exit code {result.returncode} (rendered compose file: "
                            f"{res['file']}): {output.splitlines()[-1] if output else 'no output'}", "compose",
                            output + ("\n\n" + details if details else ""))

    def _wait(self, config: Config, session: Session, where: engine.Engine, api: Any, found: dict[str, str],
              password: str, admin_password: str, user: list[ServiceSpec]) -> Running:
        host = where.url_host
        running = Running(backend=self.name)
        watches: list[containers.Watch] = []
        facts: dict[str, str] = {}
        pg: PostgresEndpoint | None = None
        redis_port = 0
        compose_file = session.resources["compose"]["file"]
        if config.postgres.enabled:
            watch = containers.Watch("postgres", found["postgres"], probe_suffices=True)
            pg = PostgresEndpoint(host=host, port=containers.host_port(api, watch, PG_CONTAINER_PORT, compose_file),
                                  user=config.postgres.user, password=password, database=config.database, admin_url="")
            # the image's superuser is the app's user; a restored snapshot holds its earlier password until
            # the database stage sets this run's
            admin = dataclasses.replace(pg, password=admin_password)
            pg = dataclasses.replace(pg, admin_url=admin.libpq(database="postgres"))
            watch.probe = _postgres_probe(admin, facts)
            watches.append(watch)
        if config.redis.enabled:
            watch = containers.Watch("redis", found["redis"], probe_suffices=True)
            redis_port = containers.host_port(api, watch, REDIS_CONTAINER_PORT, compose_file)
            watch.probe = lambda: redis_service.ping(host, redis_port)
            watches.append(watch)
        published = {}
        for spec in user:
            watch = containers.Watch(spec.name, found[spec.name])
            published[spec.name] = {n: containers.host_port(api, watch, p, compose_file) for n, p in spec.ports.items()}
            watch.probe = _user_probe(api, found[spec.name], spec, host, published[spec.name])
            watches.append(watch)
        containers.wait_all(api, watches, config.timeout, compose_file)

        if pg:
            running.services["postgres"] = dataclasses.replace(pg, version=facts.get("postgres", ""))
            session.info["postgres"] = {"image": config.postgres.image, "version": facts.get("postgres", ""),
                                        "container": found["postgres"][:12]}
        if config.redis.enabled:
            version = redis_service.version(host, redis_port)
            running.services["redis"] = RedisEndpoint(host, redis_port, config.redis.db, version=version)
            session.info["redis"] = {"image": config.redis.image, "version": version, "container": found["redis"][:12]}
        for spec in user:
            running.services[spec.name] = endpoint(spec, host, published[spec.name], config.project)
            session.info[spec.name] = {"image": spec.image or spec.template, "container": found[spec.name][:12]}
        session.save()
        return running

    # -- teardown ----------------------------------------------------------
    def teardown(self, session: Session) -> None:
        """compose down by project name, then remove anything still labelled with the session; idempotent."""
        res = session.resources.get("compose")
        if not res:
            return
        with ThreadPoolExecutor(1) as pool:
            connecting = pool.submit(self._client, session)  # imported while compose works
            composed = None  # compose down's failure, if it ran and failed
            if Path(res["file"]).exists():
                result = run([*_base(res), "down", "-v", "--remove-orphans", "-t", _STOP_TIMEOUT],
                             env=engine.compose_env(res["env"]), check=False, timeout=300)
                if result.returncode != 0:
                    composed = f"docker compose down failed (exit {result.returncode}): {result.stdout.strip()[-500:]}"
                    log.warning("%s: %s", res["project"], composed)
            try:
                client = connecting.result()
            except BackendUnavailable as exc:
                if composed is None and Path(res["file"]).exists():
                    log.warning("cannot reach the Docker engine to finish tearing down %s: %s", session.label, exc)
                    return  # compose removed the project a moment ago; only the label sweep is missing
                raise TeardownIncomplete(session.label, str(exc)) from None
            reaper.remove_session(client, session.label)
            left = {kind: [getattr(item, "name", None) or item.short_id for item in items]
                    for kind, items in reaper.resources(client, reaper.SESSION, session.label).items() if items}
            if left:
                raise TeardownIncomplete(session.label, f"these Docker resources are still there: {left}")

    # -- logs and diagnostics ----------------------------------------------
    def logs(self, session: Session, service: str | None = None) -> dict[str, str]:
        api = self._client(session).api
        found = containers.find(api, session.resources.get("compose", {}).get("project", f"envkit-{session.label}"))
        names = [service] if service else sorted(found)
        return {name: containers.logs(api, found[name]) if name in found else "(no such service)" for name in names}

    def diagnostics(self, session: Session) -> dict[str, dict[str, Any]]:
        """Per service: the whole log, the container's state (exit code, OOMKilled, ports) and its health-check history."""
        if "compose" not in session.resources:
            return {}  # failed before anything was started
        api = self._client(session).api
        out: dict[str, dict[str, Any]] = {}
        for name, container in sorted(containers.find(api, session.resources["compose"]["project"]).items()):
            try:
                attrs = api.inspect_container(container)
            except Exception as exc:  # noqa: BLE001 - a bundle must be written even when the engine misbehaves
                out[name] = {"state": {"error": str(exc)}}
                continue
            state = containers.state_summary(attrs["State"])
            state.update(container=container[:12], image=attrs["Config"]["Image"],
                         ports=attrs["NetworkSettings"].get("Ports"), compose_file=session.resources["compose"]["file"])
            out[name] = {"log": containers.logs(api, container, 5000), "state": state,
                         "health": containers.health_log(attrs["State"])}
        return out

    @staticmethod
    def _client(session: Session) -> Any:
        res = session.resources.get("compose", {})
        where = session.resources.get("engine", {})
        return engine.client(engine.Engine(url=where.get("url", engine.DEFAULT_SOCKET), context=where.get("context")),
                             res.get("env", {}))


class _Mover:
    """Moves a service whose host port envkit chose to another free one, and renders the compose file again."""

    def __init__(self, config: Config, plan: Plan, movable: set[str], where: engine.Engine, compose_file: Path) -> None:
        self.config, self.plan, self.movable, self.where, self.compose_file = config, plan, movable, where, compose_file

    def move(self, port: int) -> bool:
        """False when no movable service asked for ``port`` (a pinned port: the error stands)."""
        for service, mapping in self.plan.ports.items():
            for container_port, host in mapping.items():
                if host != port or service not in self.movable:
                    continue
                taken = {h for m in self.plan.ports.values() for h in m.values() if h}
                # a remote engine's free ports cannot be seen from here: let it choose one itself
                new = None if self.where.remote else ports.free_port(avoid=taken)
                log.warning("%s: port %d was taken while Docker published it; retrying on %s", service, port,
                            new or "a port the engine chooses")
                new_ports = {**self.plan.ports, service: {**mapping, container_port: new}}
                self.plan = dataclasses.replace(self.plan, ports=new_ports)
                write_private(self.compose_file, render(self.config, self.plan))
                return True
        return False


def missing_images(api: Any, compose_file: Path) -> dict[str, str]:
    """The services of a rendered compose file whose image is not on the engine: ``{service: image}``."""
    import docker.errors
    import yaml

    try:
        doc = yaml.safe_load(compose_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for name, service in (doc.get("services") or {}).items():
        image = (service or {}).get("image") if isinstance(service, dict) else None
        if isinstance(image, str):
            try:
                api.inspect_image(image)
            except docker.errors.ImageNotFound:
                out[name] = image
            except docker.errors.APIError:
                pass  # not a verdict on the image
    return out


def pull_failure(missing: dict[str, str], output: str) -> str:
    """What to say when compose could not pull images: which, for which service, and what the registry said."""
    said = next((line.strip() for line in reversed(output.splitlines())
                 if any(w in line.lower() for w in ("error", "denied", "not found", "manifest unknown"))), "")
    names = ", ".join(f"{image} (service {service})" for service, image in missing.items())
    return (f"docker could not pull the image{'s' if len(missing) > 1 else ''} {names}: it is not on this engine"
            + (f", and pulling it failed: {said}" if said else "")
            + ". Check the name and tag (postgres.image, redis.image, your templates), `docker pull` or build it, "
              "or tag an image you have with that name")


def _base(res: dict[str, Any]) -> list[str]:
    """The compose command line with everything that pins it to this session's project."""
    return [*res["cli"], "--ansi", "never", "-p", res["project"], "-f", res["file"],
            "--project-directory", res["project_directory"]]


def _host_port(service: str, value: int | str | None, default: int, where: engine.Engine, taken: set[int]) -> int | None:
    """None: let Docker pick (read back after start); else the port to publish, resolved like the native backend."""
    requested, strict = port_request(value, default)
    if requested == 0:
        return None
    if where.remote:  # the local port table says nothing about the remote engine's
        return requested
    port = ports.resolve(service, requested, strict, avoid=taken)
    taken.add(port)
    return port


def _image_paths(docs: engine.Inspector, image: str) -> tuple[dict[str, str], list[str] | None]:
    """The image's environment and declared VOLUMEs; (\\{}, None) when it is not present locally yet."""
    found = docs.image(image)
    if found is None:
        return {}, None
    return _image_env(found), sorted((found.get("Config") or {}).get("Volumes") or {})


def _services(config: Config, user: list[ServiceSpec]) -> list[str]:
    return [name for name, on in (("postgres", config.postgres.enabled), ("redis", config.redis.enabled)) if on] + [
        spec.name for spec in user]


def _image_env(image: dict[str, Any]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (image.get("Config") or {}).get("Env") or [] if "=" in item)


def _waits(text: str) -> bool:
    """Whether the rendered postgres service waits for a restored snapshot (a user's own template may not)."""
    import yaml  # 30 ms: only asked of a user's own postgres template; envkit's own renders the wait

    service = (yaml.safe_load(text).get("services") or {}).get("postgres") or {}
    entrypoint = service.get("entrypoint") or []
    return len(entrypoint) > 3 and entrypoint[3] == "envkit-wait"


@dataclasses.dataclass(frozen=True)
class _Snapshot:
    entry: Path
    pgdata: str
    docker: str
    entrypoint: list[str] | None
    builtin_template: bool  # envkit's own services/postgres.yml.j2, which renders the waiting entrypoint


def _postgres_probe(pg: PostgresEndpoint, facts: dict[str, str]) -> Any:
    def probe() -> bool:
        import psycopg

        with psycopg.connect(pg.libpq(), connect_timeout=2, autocommit=True) as conn:
            conn.execute("SELECT 1")
            number = conn.info.server_version
        facts["postgres"] = f"{number // 10000}.{number % 10000}"
        return True

    return probe


def _user_probe(api: Any, container: str, spec: ServiceSpec, host: str, published: dict[str, int]) -> Any:
    probe = spec.probe
    if probe.kind == "tcp":
        return lambda: containers.tcp_probe(host, published[spec.port_of(probe.port)])
    if probe.kind == "http":
        return lambda: containers.http_probe(host, published[spec.port_of(probe.port)], probe.target)
    if probe.kind == "command":
        return lambda: containers.command_probe(api, container, probe.target)
    if probe.kind == "log":
        return lambda: containers.log_probe(api, container, probe.target)
    if not spec.template and spec.ports:  # an image envkit rendered has no health check: its first port decides
        return lambda: containers.tcp_probe(host, published[spec.port_of(None)])
    return None  # "health": the container's own health check decides


def prune(config: Config, *, dry_run: bool = False) -> list[str]:
    """``envkit prune``: remove the Docker resources of every orphaned session on this engine and host."""
    client = engine.client(engine.locate(config.environ, config.host), config.environ)
    if dry_run:
        return sorted(reaper.orphaned(client))
    return reaper.prune(client)
