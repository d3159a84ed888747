"""The docker backend: a rendered docker-compose.test.yml run with the Compose CLI.

    plan (ports, the images' data paths, labels) → render → compose up -d
    → wait (container state and health, host-side probes) → hand over
    … teardown: compose down -v --remove-orphans, then remove whatever still
    carries the session's label

Every stage runs one list of services (:func:`envkit.services.containers`),
built-ins and user services alike, and reads what it needs from each record;
the one exception is the postgres snapshot restore, behind :mod:`.snapshots`.

Compose is always called with an explicit project name (``envkit-<session>``),
``-f`` and ``--project-directory``, in an environment without ``COMPOSE_*``,
so neither the user's shell nor a ``.env`` can point it elsewhere. Waiting,
logs and cleanup use the Docker SDK.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any, ClassVar

from ... import ports, progress, services, watchdog
from ...config import Config, port_request
from ...errors import BackendUnavailable, PortInUse, ServiceFailed, TeardownIncomplete
from ...proc import run
from ...services import Container, ServiceSpec
from ...services.container import Port
from ...state import Session, write_private
from ..base import Running
from . import containers, engine, reaper, snapshots
from .render import Health, Plan, render

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
            session.password = session.password or services.password(config)  # made once: a restart keeps it
            password = session.password
            listed = services.containers(config, password)  # a service the config gets wrong fails here, before anything
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

            docs = engine.Inspector(where, connecting)
            restore = snapshots.find(config, session, docs, snapshot)
            plan, movable = self._plan(config, session, where, docs, password, listed)
            text = render(config, restore.waiting(plan, config.timeout) if restore else plan)
            if restore and not restore.rendered(text):  # a user's own postgres template that cannot wait for it
                restore, text = None, render(config, plan)
            elif restore:
                plan = restore.waiting(plan, config.timeout)  # kept when a port moves and the file is rendered again
            write_private(compose_file, text)
            for service in listed:
                progress.note(service.name, "starting container")
            self._up(session, connecting, engine.compose_env(config.environ),
                     _Mover(config, plan, movable, where, compose_file), {s.name: s.setting for s in listed})
            client = connecting.result()
        finally:
            pool.shutdown(wait=False)
        found = containers.find(client.api, session.resources["compose"]["project"])
        session.resources["containers"] = found
        session.save()
        # the container waits for its data: the critical path
        restored = restore.into(engine.compose_env(config.environ), found, session.users_file) if restore else None
        try:  # while the containers start: environments of envkit processes that were killed, on this engine and host
            reaper.prune(client)
        except Exception as exc:  # noqa: BLE001 - reaping others must never stop this run
            log.warning("could not look for orphaned environments: %s", exc)
        running = self._wait(config, session, where, client.api, found, listed, restored)
        running.restored = restored is not None
        return running

    def save_snapshot(self, config: Config, session: Session, running: Running, key: str) -> None:
        """Keep the freshly migrated and seeded data directory (an online backup) for the next run."""
        snapshots.keep(config, session, running)

    def _plan(self, config: Config, session: Session, where: engine.Engine, docs: engine.Inspector, password: str,
              listed: list[Container[Any]]) -> tuple[Plan, set[str]]:
        """The plan, and the services whose host port envkit chose (not pinned): those may move if it is taken."""
        taken: set[int] = set()
        plan_ports: dict[str, dict[int, int | None]] = {}
        tmpfs: dict[str, list[str]] = {}
        for service in listed:
            plan_ports[service.name] = {port.container: _host_port(service.name, port, where, taken)
                                        for port in service.ports.values()}
            if service.tmpfs is not None and service.image:
                image = docs.image(service.image)
                tmpfs[service.name] = service.tmpfs(engine.image_env(image), engine.image_volumes(image)) if image \
                    else service.tmpfs({}, None)
        movable = {service.name for service in listed if any(port.movable for port in service.ports.values())}
        modern = docs.at_least("1.44")  # Docker 25: start_interval, so checks are fast early and rare later
        health = Health(interval="1s" if modern else "250ms", start_interval="100ms" if modern else None,
                        start_period=f"{max(int(config.timeout), 1)}s")
        return Plan(labels=reaper.labels(config, session), password=password, bind=where.bind, ports=plan_ports,
                    tmpfs=tmpfs, health=health, image_volumes=lambda image: _volumes(docs, image)), movable

    def _up(self, session: Session, connecting: Future[Any], environ: dict[str, str], mover: _Mover,
            settings: dict[str, str]) -> None:
        """compose up, moving a port another run took meanwhile; ``settings``: where each service's image is set."""
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
            raise ServiceFailed(pull_failure(missing, output, settings), "compose", output)
        found = containers.find(api, res["project"])
        details = "\n\n".join(containers.diagnose(api, s, c) for s, c in found.items())
        raise ServiceFailed(f"docker compose up failed with exit code {result.returncode} (rendered compose file: "
                            f"{res['file']}): {output.splitlines()[-1] if output else 'no output'}", "compose",
                            output + ("\n\n" + details if details else ""))

    def _wait(self, config: Config, session: Session, where: engine.Engine, api: Any, found: dict[str, str],
              listed: list[Container[Any]], restored: snapshots.Restored | None) -> Running:
        """Wait for every service at once; their endpoints, as the servers describe themselves once ready."""
        host = where.url_host
        compose_file = session.resources["compose"]["file"]
        watches: list[containers.Watch] = []
        endpoints: dict[str, Any] = {}
        described: dict[str, Any] = {}  # what a built-in's probe said once it answered (its version)
        for service in listed:
            # a service's own probe is at least as strict as its health check; a user's must agree with it
            watch = containers.Watch(service.name, found[service.name], probe_suffices=service.probe is not None)
            published = {name: containers.host_port(api, watch, port.container, compose_file)
                         for name, port in service.ports.items()}
            endpoint = service.endpoint(host, published)
            endpoints[service.name] = restored.admit(service.name, endpoint) if restored else endpoint
            if service.probe is not None:
                watch.probe = _probe(service, endpoints[service.name], described)
            elif service.spec is not None:
                watch.probe = _user_probe(api, found[service.name], service.spec, host, published)
            watches.append(watch)
        containers.wait_all(api, watches, config.timeout, compose_file)

        running = Running(backend=self.name)
        for service in listed:
            endpoint = described.get(service.name, endpoints[service.name])
            running.services[service.name] = endpoint
            session.info[service.name] = {**service.facts(endpoint), "container": found[service.name][:12]}
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


def pull_failure(missing: dict[str, str], output: str, settings: dict[str, str]) -> str:
    """What to say when compose could not pull images: which, for which service, what the registry said, and
    where each is set (``settings``: service -> setting)."""
    said = next((line.strip() for line in reversed(output.splitlines())
                 if any(w in line.lower() for w in ("error", "denied", "not found", "manifest unknown"))), "")
    names = ", ".join(f"{image} (service {service})" for service, image in missing.items())
    where = ", ".join(dict.fromkeys(settings[s] for s in missing if settings.get(s)))
    return (f"docker could not pull the image{'s' if len(missing) > 1 else ''} {names}: it is not on this engine"
            + (f", and pulling it failed: {said}" if said else "")
            + f". Check the name and tag ({where + ', ' if where else ''}your templates), `docker pull` or build it, "
              "or tag an image you have with that name")


def _base(res: dict[str, Any]) -> list[str]:
    """The compose command line with everything that pins it to this session's project."""
    return [*res["cli"], "--ansi", "never", "-p", res["project"], "-f", res["file"],
            "--project-directory", res["project_directory"]]


def _host_port(service: str, port: Port, where: engine.Engine, taken: set[int]) -> int | None:
    """None: let Docker pick (read back after start); else the port to publish, resolved like the native backend."""
    if port.default is None:
        return None
    requested, strict = port_request(port.request, port.default)
    if requested == 0:
        return None
    if where.remote:  # the local port table says nothing about the remote engine's
        return requested
    found = ports.resolve(service, requested, strict, avoid=taken)
    taken.add(found)
    return found


def _volumes(docs: engine.Inspector, image: str) -> list[str]:
    """An image's declared VOLUMEs; none when it is not present locally yet."""
    found = docs.image(image)
    return engine.image_volumes(found) if found else []


def _probe(service: Container[Any], endpoint: Any, described: dict[str, Any]) -> Any:
    """A built-in's own probe against its published port, keeping what the server said of itself."""
    assert service.probe is not None
    check = service.probe

    def probe() -> bool:
        found = check(endpoint)
        if found is None:
            return False
        described[service.name] = found
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
