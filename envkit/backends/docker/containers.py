"""Containers of a running compose project: their state, readiness, logs and diagnostics.

Readiness is one :func:`~envkit.wait.wait_for` loop over every service at
once, so a service that dies fails the start at once even while another is
still initialising. Each round inspects each pending container:

- exited, dead, restarting, OOM-killed or ``unhealthy``: fail now, with the
  state, the health-check history and the last log lines;
- otherwise ready when its health check passes, or (a service that declares
  its own probe: the built-ins) as soon as the host-side probe answers, which
  is at least as strict and does not wait for the next health-check interval;
  a user service needs both.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ... import progress
from ...errors import ReadyTimeout, ServiceExited, ServiceFailed
from ...services import probes
from ...wait import wait_for

log = logging.getLogger("envkit")

LOG_LINES = 30


@dataclass
class Watch:
    """One service to wait for."""

    service: str
    container: str  # id
    probe: Callable[[], bool] | None = None
    probe_suffices: bool = False  # the service's own probe (the built-ins'): passing it is enough, health or not
    last_error: str = field(default="", init=False)
    running_since: float | None = field(default=None, init=False)  # when envkit first saw it running
    shown: str = field(default="", init=False)  # the state last shown as progress

    def show(self, what: str) -> None:
        if what != self.shown:
            self.shown = what
            progress.note(self.service, what)


#: A service without a Docker health check must be seen running this long: a container that exits at
#: once is briefly "running", and Docker's port proxy may still accept connections for it meanwhile.
SETTLE = 0.3


def find(api: Any, project: str) -> dict[str, str]:
    """service name -> container id, for a compose project."""
    found = api.containers(all=True, filters={"label": f"com.docker.compose.project={project}"})
    return {c["Labels"]["com.docker.compose.service"]: c["Id"] for c in found}


def host_port(api: Any, watch: Watch, port: int, compose_file: str) -> int:
    """The host port Docker published ``port/tcp`` on (gone once the container has exited: then say why)."""
    attrs = api.inspect_container(watch.container)
    ports = (attrs["NetworkSettings"].get("Ports") or {}).get(f"{port}/tcp") or []
    if not ports:
        _ready(api, watch, compose_file)  # raises if it died
        raise ServiceFailed(f"{watch.service} publishes no host port for {port}/tcp (rendered compose file: "
                            f"{compose_file})", watch.service, diagnose(api, watch.service, watch.container))
    return int(ports[0]["HostPort"])


def wait_all(api: Any, watches: list[Watch], timeout: float, compose_file: str) -> None:
    """Wait until every service is ready; fail fast with diagnostics when one never will be."""
    pending = {w.service: w for w in watches}
    start = time.monotonic()

    def check() -> bool:
        for service, watch in list(pending.items()):
            if _ready(api, watch, compose_file):
                log.info("%s: ready after %.2f s", service, time.monotonic() - start)
                watch.show(f"ready ({time.monotonic() - start:.1f} s)")
                del pending[service]
        return not pending

    try:
        wait_for(check, service=", ".join(pending), what="containers running and healthy", timeout=timeout,
                 max_interval=0.05)
    except ReadyTimeout:
        names = ", ".join(pending)
        probes = "; ".join(f"{w.service} probe: {w.last_error}" for w in pending.values() if w.last_error)
        details = "\n\n".join(diagnose(api, w.service, w.container) for w in pending.values())
        raise ReadyTimeout(
            f"{names}: not ready within {timeout:g} s (rendered compose file: {compose_file})"
            f"{'; last ' + probes if probes else ''}; raise the timeout (--timeout, ENVKIT_TIMEOUT)"
            + (" or see the diagnostics below" if details.strip() else ""),
            next(iter(pending)), details,
        ) from None


def _ready(api: Any, watch: Watch, compose_file: str) -> bool:
    state = api.inspect_container(watch.container)["State"]
    health = (state.get("Health") or {}).get("Status")
    _raise_if_failed(api, watch, state, compose_file)
    watch.show(f"{state.get('Status')}{', health ' + health if health else ''}")
    if state.get("Status") != "running":
        return False
    if health is None:
        watch.running_since = watch.running_since or time.monotonic()
        if time.monotonic() - watch.running_since < SETTLE:
            return False
    healthy = health in (None, "healthy")
    if watch.probe is None:
        return healthy and _still_running(api, watch, compose_file)
    if watch.probe_suffices or healthy:
        try:
            return bool(watch.probe()) and _still_running(api, watch, compose_file)
        except (TypeError, NameError, AttributeError):
            raise  # a bug in envkit, not a service that is not ready yet
        except Exception as exc:  # noqa: BLE001 - any other error means "not yet"; the next service is checked too
            watch.last_error = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
            return False
    return False


def _still_running(api: Any, watch: Watch, compose_file: str) -> bool:
    """Look again after the probe: it may have talked to Docker's proxy for a container that just died."""
    state = api.inspect_container(watch.container)["State"]
    _raise_if_failed(api, watch, state, compose_file)
    return state.get("Status") == "running"


def _raise_if_failed(api: Any, watch: Watch, state: dict[str, Any], compose_file: str) -> None:
    failure = _failure(state)
    if failure:
        kind = ServiceExited if state.get("Status") in ("exited", "dead") else ServiceFailed
        raise kind(f"{watch.service} {failure} (rendered compose file: {compose_file})", watch.service,
                   diagnose(api, watch.service, watch.container))


def _failure(state: dict[str, Any]) -> str | None:
    if state.get("OOMKilled"):
        return "was killed for running out of memory (OOMKilled); give the engine more memory"
    if state.get("Status") in ("exited", "dead"):
        return f"exited with code {state.get('ExitCode')} before it was ready"
    if state.get("Restarting"):
        return f"keeps restarting (last exit code {state.get('ExitCode')})"
    if (state.get("Health") or {}).get("Status") == "unhealthy":
        return "is unhealthy: its health check kept failing"
    if state.get("Error"):
        return f"could not start: {state['Error']}"
    return None


def state_summary(state: dict[str, Any]) -> dict[str, Any]:
    return {"status": state.get("Status"), "exit_code": state.get("ExitCode"), "oom_killed": state.get("OOMKilled"),
            "error": state.get("Error") or None, "health": (state.get("Health") or {}).get("Status"),
            "started_at": state.get("StartedAt"), "finished_at": state.get("FinishedAt")}


def health_log(state: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"exit_code": h.get("ExitCode"), "output": (h.get("Output") or "").strip(), "at": h.get("Start")}
            for h in (state.get("Health") or {}).get("Log") or []]


def logs(api: Any, container: str, tail: int | str = "all") -> str:
    try:
        return str(api.logs(container, stdout=True, stderr=True, tail=tail).decode(errors="replace"))
    except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the original failure
        return f"(logs unavailable: {exc})"


def diagnose(api: Any, service: str, container: str) -> str:
    """State, health-check history and last log lines of one service, for an error message."""
    try:
        state = api.inspect_container(container)["State"]
    except Exception as exc:  # noqa: BLE001
        return f"--- {service}: cannot inspect container {container[:12]}: {exc}"
    s = state_summary(state)
    lines = [f"--- {service} (container {container[:12]}): {s['status']}, exit code {s['exit_code']}, "
             f"OOMKilled {str(bool(s['oom_killed'])).lower()}, health {s['health'] or 'none'}"
             + (f", error: {s['error']}" if s["error"] else "")]
    history = health_log(state)
    if history:
        lines.append("health checks (latest last):")
        lines += [f"  exit {h['exit_code']}: {h['output'][:200] or '(no output)'}" for h in history[-5:]]
    text = logs(api, container, LOG_LINES).rstrip()
    lines.append(f"log (last {LOG_LINES} lines):" if text else "log: empty")
    lines += ["  " + line for line in text.splitlines()]
    return "\n".join(lines)


# -- probes (host side, or in the container) -------------------------------------

def tcp_probe(host: str, port: int) -> bool:
    """A published port that accepts and then stays open (see :func:`envkit.services.probes.tcp`)."""
    return probes.tcp(host, port, stays_open=True)


http_probe = probes.http


def command_probe(api: Any, container: str, argv: list[str]) -> bool:
    exec_id = api.exec_create(container, argv, stdout=True, stderr=True)["Id"]
    api.exec_start(exec_id)
    return api.exec_inspect(exec_id).get("ExitCode") == 0


def log_probe(api: Any, container: str, pattern: str) -> bool:
    return re.search(pattern, logs(api, container), re.MULTILINE) is not None
