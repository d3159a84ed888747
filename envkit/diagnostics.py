"""The diagnostics bundle: what a failed run leaves behind so that it explains itself without a rerun.

Written when a stage fails (``diagnostics = "on-failure"``, the default), or
always (``"always"``, ``--diagnostics``), *before* teardown removes the logs::

    .envkit/diagnostics/<environment>/
        README.md              what failed, where, and what is in here
        environment.json       result, error (stage, service), services, stage timings, health-check history
        config.json            the effective configuration, secrets redacted
        services/<name>.log    each service's log
        services/<name>.json   its state (running, exit code, ...) and health-check history
        compose/<file>         the rendered compose file, when the backend wrote one

Every file is private (0600) and every known secret is replaced by ``***`` in each spelling envkit
writes it in (:mod:`envkit.redact`). Only the compose file this session rendered is copied.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import redact, signals, wait
from .errors import BackendUnavailable, EnvkitError
from .state import Session, write_private

if TYPE_CHECKING:
    from .backends.base import Backend
    from .config import Config
    from .services import Running

log = logging.getLogger("envkit")

FOLDER = "diagnostics"
KEEP = 5  # bundles kept per checkout; older ones are removed when a new one is written
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)


#: The service a stage works on, for errors that do not name one themselves.
_STAGE_SERVICE = {"database": "postgres", "ready": "postgres", "migrate": "postgres", "seed": "postgres",
                  "template": "postgres", "snapshot": "postgres"}


def service_of(error: BaseException) -> str | None:
    """The service a failure concerns: the error's own, or the one its stage works on."""
    return getattr(error, "service", None) or _STAGE_SERVICE.get(getattr(error, "stage", None) or "")


def folder(config: Config) -> Path:
    return config.state_path / FOLDER


@contextlib.contextmanager
def capture(config: Config, session: Session, backend: Backend, timings: dict[str, float],
            report: Callable[[str, str, float, str], None]) -> Iterator[None]:
    """Around bringing an environment up: on a failure, write the bundle while everything still exists.

    Enter it *after* the ExitStack that tears the environment down, so that it
    exits first. The bundle's path is reported as a ``diagnostics`` stage and
    set as the error's ``diagnostics`` attribute; a failure to write it is
    logged and never hides the original error.
    """
    with wait.recording() as history:
        try:
            yield
        except Exception as exc:  # not Interrupted (no Exception): the user stopped envkit, tear down quickly
            if config.diagnostics != "never" and not signals.received():  # an error the signal caused explains nothing
                t0 = time.perf_counter()
                try:
                    path = write(config, session, backend, timings=timings, history=history, error=exc)
                except Exception as inner:  # noqa: BLE001 - never mask the real failure
                    log.warning("could not write the diagnostics bundle: %s", inner)
                else:
                    if isinstance(exc, EnvkitError):
                        exc.diagnostics = path
                    report("diagnostics", "done", time.perf_counter() - t0, f"written to {path}")
            raise


def write(config: Config, session: Session, backend: Backend, *, timings: Mapping[str, float],
          history: Iterable[Mapping[str, Any]] = (), error: BaseException | None = None,
          running: Running | None = None) -> Path:
    """Write the bundle for ``session`` and return its folder."""
    out = folder(config) / session.label
    if out.exists():
        shutil.rmtree(out)
    for path in (folder(config), out, out / "services"):
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    scrub = redact.for_run(config, session)
    per_service = _collect(backend, session, error)
    history = list(history)
    for name, info in per_service.items():
        info.setdefault("health", [])
        info["health"] = list(info["health"]) + [h for h in history if h.get("service") == name]
        write_private(out / "services" / f"{name}.log", scrub(str(info.get("log", ""))))
        detail = {"state": info.get("state", {}), "health": info["health"]}
        write_private(out / "services" / f"{name}.json", scrub(json.dumps(detail, indent=2, default=str)))
    compose = _compose_files(config, session)
    for file in compose:
        (out / "compose").mkdir(exist_ok=True, mode=0o700)
        write_private(out / "compose" / file.name, scrub(file.read_text(errors="replace")))
    summary = describe(config, session, per_service, timings=timings, error=error, running=running)
    summary["diagnostics"] = str(out)
    summary["health"] = history
    summary["compose_files"] = [str(f) for f in compose]
    write_private(out / "environment.json", scrub(json.dumps(summary, indent=2, default=str)))
    write_private(out / "config.json", scrub(json.dumps(redacted_config(config), indent=2, default=str)))
    write_private(out / "README.md", scrub(readme(summary)))
    _prune(folder(config), keep=out)
    return out


def describe(config: Config, session: Session, per_service: Mapping[str, Mapping[str, Any]] | None = None, *,
             timings: Mapping[str, float], error: BaseException | None = None, running: Running | None = None,
             ) -> dict[str, Any]:
    """The environment in one JSON-able dict: what ran where, how long each stage took, how it ended."""
    failed = None
    if error is not None:
        failed = {"stage": getattr(error, "stage", None), "service": service_of(error),
                  "type": type(error).__name__, "message": str(error)}
    return {
        "name": session.label,
        "project": config.project,
        "backend": session.backend,
        "result": "failed" if error is not None else "ok",
        "error": failed,
        "services": services(session, running, per_service),
        "stages": [{"stage": k, "seconds": round(v, 4), "status": "failed" if failed and failed["stage"] == k else "done"}
                   for k, v in timings.items()],
        "envkit": _version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(session.started_at)),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def services(session: Session, running: Running | None = None,
             per_service: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Name, version, host, port and status of each service, from whatever is known."""
    found: dict[str, dict[str, Any]] = {}
    for name in ("postgres", "redis"):
        if isinstance(session.info.get(name), dict):
            found[name] = {"name": name, "version": session.info[name].get("version", ""), "host": None, "port": None}
    if running is not None:
        for name, endpoint in (("postgres", running.postgres), ("redis", running.redis)):
            if endpoint is not None:
                found.setdefault(name, {"name": name})
                found[name].update(version=endpoint.version or found[name].get("version", ""), host=endpoint.host,
                                   port=endpoint.port, status="up")
        for name in running.user:
            found.setdefault(name, {"name": name, "version": "", "host": None, "port": None, "status": "up"})
    for name, info in (per_service or {}).items():
        state = info.get("state") or {}
        entry = found.setdefault(name, {"name": name, "version": "", "host": None, "port": None})
        entry["status"] = state.get("status") or entry.get("status") or "unknown"
        for key in ("version", "host", "port"):
            if not entry.get(key) and state.get(key):
                entry[key] = state[key]
    for entry in found.values():
        entry.setdefault("status", "unknown")
    return list(found.values())


def redacted_config(config: Config) -> dict[str, Any]:
    """The effective configuration as a dict, without the process environment and with secrets replaced by ``***``."""
    data = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != "environ"}
    return _redact(json.loads(json.dumps(data, default=_plain)))


def readme(summary: Mapping[str, Any]) -> str:
    """A short human account of the bundle (also what a CI step summary shows)."""
    lines = [f"# envkit diagnostics: {summary['name']}", ""]
    error = summary.get("error")
    if error:
        where = f" at stage **{error['stage']}**" if error.get("stage") else ""
        who = f" (service **{error['service']}**)" if error.get("service") else ""
        lines += [f"**Result: failed{where}{who}**", "", "```", str(error["message"]).strip(), "```", ""]
    else:
        lines += ["**Result: ok**", ""]
    lines += [f"Backend: {summary['backend']}. envkit {summary['envkit']}, Python {summary['python']}, {summary['platform']}.", ""]
    if summary.get("services"):
        lines += services_table(summary["services"])
    if summary.get("stages"):
        lines += ["| stage | result | seconds |", "|---|---|---:|"]
        lines += [f"| {s['stage']} | {s['status']} | {s['seconds']:.3f} |" for s in summary["stages"]]
        lines.append("")
    lines += ["Files: `environment.json` (all of the above, and the health-check history), `config.json` (effective",
              "configuration, secrets redacted), `services/<name>.log` and `services/<name>.json` (state, health checks)",
              "and, for the Docker backend, `compose/` (the rendered compose file).", ""]
    return "\n".join(lines)


# -- helpers ---------------------------------------------------------------------

def _collect(backend: Backend, session: Session, error: BaseException | None) -> dict[str, dict[str, Any]]:
    from .backends.base import SupportsDiagnostics

    out: dict[str, dict[str, Any]] = {}
    if isinstance(error, BackendUnavailable):
        return out  # no engine to ask: the error says so already, and saying it twice more helps nobody
    if isinstance(backend, SupportsDiagnostics):
        try:
            out = {name: dict(info) for name, info in backend.diagnostics(session).items()}
        except BackendUnavailable as exc:
            log.warning("%s backend: the services' logs cannot be read: %s", session.backend, exc)
            return out
        except Exception as exc:  # noqa: BLE001 - a half-dead backend: fall back to its logs
            log.warning("%s backend: diagnostics failed (%s); collecting its logs only", session.backend, exc)
    if not out:
        try:
            out = {name: {"log": text, "state": {}} for name, text in backend.logs(session).items()}
        except Exception as exc:  # noqa: BLE001
            log.warning("%s backend: cannot read the services' logs: %s", session.backend, exc)
    return out


def _compose_files(config: Config, session: Session) -> list[Path]:
    # only the files this session recorded: .envkit/ may hold an earlier docker run's compose file
    candidates = [Path(v) for v in redact.strings(session.resources) if v.endswith((".yml", ".yaml")) and "\n" not in v]
    seen: dict[Path, None] = {}
    for path in candidates:
        if path.is_file() and FOLDER not in path.parts:
            seen.setdefault(path.resolve())
    return list(seen)


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str) and value:
        if _SECRET_KEY.search(key):
            return redact.MASK
        return redact.url(value)
    return value


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _prune(root: Path, keep: Path) -> None:
    bundles = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [b for b in bundles if b != keep][KEEP - 1:]:
        shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    from . import __version__

    return __version__


def services_table(services: list[dict[str, Any]]) -> list[str]:
    """A Markdown table of services (name, version, address, status), for summaries; ends with a blank line."""
    lines = ["| service | version | address | status |", "|---|---|---|---|"]
    for s in services:
        address = f"`{s.get('host') or '?'}:{s['port']}`" if s.get("port") else "-"
        lines.append(f"| {s['name']} | {s.get('version') or '-'} | {address} | {s.get('status', '')} |")
    return [*lines, ""]
