"""GitHub Actions: the runner's files and workflow commands, for the CLI.

Active when ``GITHUB_ACTIONS=true`` in the environment envkit was given
(``Config.environ``; nothing here reads ``os.environ``):

- secrets are masked with ``::add-mask::`` as soon as an environment is up,
  so test output that prints a URL shows ``***``;
- ``envkit env --github`` appends the variables to the file named by
  ``$GITHUB_ENV`` itself (values with newlines in the heredoc syntax) and
  prints only ``::add-mask::`` lines on stdout. ``envkit env --format github
  >> "$GITHUB_ENV"`` works too: its masks go to stderr, which the runner also
  reads, so that they never land in the file;
- a Markdown summary is appended to ``$GITHUB_STEP_SUMMARY`` (services,
  versions, ports, each stage's duration, the result);
- outputs go to ``$GITHUB_OUTPUT``: ``result``, ``exit-code``, ``environment``
  and ``diagnostics`` (the bundle's folder, for ``actions/upload-artifact``);
- on failure: an ``::error::`` annotation naming the stage and service, and
  each service's log from the diagnostics bundle folded in a ``::group::``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from . import redact
from .diagnostics import services_table
from .errors import ConfigError
from .exports import github_env, secrets_of

if TYPE_CHECKING:
    from .lifecycle import Environment

__all__ = ["active", "append_env", "error_command", "finish", "group", "mask_commands", "report", "set_outputs",
           "summary_markdown"]

_LOG_LINES = 400  # per service, in the log groups (the bundle keeps the whole log)


def active(environ: Mapping[str, str]) -> bool:
    """Whether envkit runs as a step of a GitHub Actions job."""
    return environ.get("GITHUB_ACTIONS") == "true"


def escape_data(text: str) -> str:
    """A workflow command's message: the runner decodes %25, %0D and %0A."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


#: Passwords that are no secret (a workflow's service container states them) and that, masked, would turn every
#: "postgres" in the log into "***". Whole URLs holding them are still masked.
_PUBLIC_PASSWORDS = {"postgres", "password", "secret", "test", "root", "redis", "envkit"}


def mask_values(env: Mapping[str, str]) -> list[str]:
    """Every form in which a secret of ``env`` could be printed: whole values, lines, passwords, decoded or not."""
    found: dict[str, None] = {}
    for key, value in env.items():
        if value not in secrets_of({key: value}):
            continue
        if "://" not in value and value.lower() in _PUBLIC_PASSWORDS | {env.get("PGUSER", "").lower()}:
            continue
        found.setdefault(value)
        if "://" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            for form in (password, unquote(password or "")):
                if form and form.lower() not in _PUBLIC_PASSWORDS:
                    found.setdefault(form)
    out: dict[str, None] = {}
    for value in found:
        for line in value.splitlines() or [value]:  # the runner masks line by line
            if len(line.strip()) >= 3:
                out.setdefault(line)
    return list(out)


def mask_commands(env: Mapping[str, str]) -> str:
    """``::add-mask::`` lines for the secrets of ``env``."""
    return "".join(f"::add-mask::{escape_data(value)}\n" for value in mask_values(env))


def append_env(environ: Mapping[str, str], env: Mapping[str, str]) -> Path:
    """Append ``env`` to the file named by ``$GITHUB_ENV``, for the job's later steps."""
    return _append(environ, "GITHUB_ENV", github_env(env))


def set_outputs(environ: Mapping[str, str], outputs: Mapping[str, str]) -> Path | None:
    """Append step outputs to ``$GITHUB_OUTPUT`` (same syntax as ``$GITHUB_ENV``); None outside a step."""
    if not environ.get("GITHUB_OUTPUT"):
        return None
    return _append(environ, "GITHUB_OUTPUT", github_env(outputs))


def group(title: str, text: str) -> str:
    """``text`` folded under ``title``; workflow commands inside it are not obeyed (a log could contain one)."""
    token = secrets.token_hex(12)
    body = text if text.endswith("\n") or not text else text + "\n"
    return f"::group::{escape_data(title)}\n::stop-commands::{token}\n{body}::{token}::\n::endgroup::\n"


def error_command(message: str, *, stage: str | None, service: str | None) -> str:
    title = "envkit failed" + (f" at stage {stage}" if stage else "") + (f" (service {service})" if service else "")
    return f"::error title={escape_property(title)}::{escape_data(message.strip())}\n"


def summary_markdown(report: Mapping[str, Any]) -> str:
    """The step summary: the environment, its stages and how it ended."""
    ok = report["result"] == "ok"
    lines = [f"### envkit {report.get('command', '')}: {'✅ ok' if ok else '❌ failed'}".replace("  ", " "), ""]
    lines.append(f"Environment `{report.get('name') or '?'}` on the **{report.get('backend') or '?'}** backend."
                 + (f" Exit code {report['exit_code']}." if report.get("exit_code") is not None else ""))
    lines.append("")
    error = report.get("error")
    if error:
        where = ", ".join(f"{k} `{error[k]}`" for k in ("stage", "service") if error.get(k))
        lines += [f"**Failed**{' at ' + where if where else ''}:", "", "```text", str(error["message"]).strip(), "```", ""]
    if report.get("services"):
        lines += services_table(report["services"])
    if report.get("stages"):
        lines += ["| stage | result | seconds | detail |", "|---|---|---:|---|"]
        for s in report["stages"]:
            mark = "ok" if s["status"] == "done" else s["status"]
            detail = str(s.get("detail", "")).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {s['stage']} | {mark} | {s['seconds']:.3f} | {detail} |")
        total = sum(s["seconds"] for s in report["stages"])
        lines += [f"| **total** | | **{total:.3f}** | |", ""]
    if report.get("diagnostics"):
        lines += [f"Diagnostics bundle: `{report['diagnostics']}` (logs, health checks, redacted config, timings).", ""]
    return "\n".join(lines) + "\n"


def report(command: str, exit_code: int, error: BaseException | None, stages: list[dict[str, Any]],
           env: Environment | None, scrub: Callable[[str], str] = redact.urls) -> dict[str, Any]:
    """What :func:`finish` needs, from what the CLI saw: the reporter's stages and the environment it brought up.

    ``scrub`` redacts the error's message (the CLI's :func:`envkit.redact.for_run` knows the run's secrets).
    """
    from .diagnostics import service_of, services

    failed = None
    if error is not None:
        failed = {"stage": getattr(error, "stage", None), "service": service_of(error), "message": scrub(str(error))}
    bundle = getattr(error, "diagnostics", None) or next(
        (s["detail"].removeprefix("written to ") for s in stages if s["stage"] == "diagnostics"), None)
    return {
        "command": command,
        "result": "ok" if exit_code == 0 else "failed",
        "exit_code": exit_code,
        "name": env.session.label if env else None,
        "backend": env.session.backend if env else None,
        "services": services(env.session, env.running) if env else [],
        "stages": [s for s in stages if s["stage"] != "diagnostics"],
        "error": failed,
        "diagnostics": str(bundle) if bundle else None,
    }


def finish(environ: Mapping[str, str], report: dict[str, Any], stream: IO[str]) -> None:
    """At the end of a command that brought an environment up: summary, outputs, and on failure the annotation and logs.

    ``report`` holds ``command``, ``result`` ("ok"/"failed"), ``exit_code``,
    ``name``, ``backend``, ``services``, ``stages``, ``error`` ({stage,
    service, message} or None) and ``diagnostics`` (a folder or None); what is
    missing is taken from the diagnostics bundle when there is one.
    """
    if not active(environ):
        return
    bundle = _bundle(report.get("diagnostics"))
    for key in ("name", "backend", "services"):
        if not report.get(key) and bundle.get(key):
            report[key] = bundle[key]
    if report.get("error") and not report["error"].get("service") and bundle.get("error"):
        report["error"]["service"] = bundle["error"].get("service")
    brought_up = report.get("stages") or report.get("name") or report.get("error")
    if environ.get("GITHUB_STEP_SUMMARY") and brought_up:  # not when a command reused an environment from `envkit up`
        _append(environ, "GITHUB_STEP_SUMMARY", redact_urls(summary_markdown(report)))
    outputs = {"result": report["result"], "exit-code": str(report.get("exit_code", "")),
               "environment": report.get("name") or "", "diagnostics": str(report.get("diagnostics") or "")}
    set_outputs(environ, outputs)
    if report["result"] == "ok":
        return
    error = report.get("error")
    if error:
        message = redact_urls(str(error["message"]))
        stream.write(error_command(message, stage=error.get("stage"), service=error.get("service")))
    folder = Path(report["diagnostics"]) if report.get("diagnostics") else None
    if folder and (folder / "services").is_dir():
        for log in sorted((folder / "services").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            cut = f"(last {_LOG_LINES} of {len(lines)} lines; the whole log is in {log})\n" if len(lines) > _LOG_LINES else ""
            stream.write(group(f"envkit: {log.stem} log", cut + "\n".join(lines[-_LOG_LINES:])))
    stream.flush()


def redact_urls(text: str) -> str:
    """``scheme://user:***@host``: the password of any URL in ``text`` replaced (:func:`envkit.redact.urls`)."""
    return redact.urls(text)


def _bundle(folder: str | Path | None) -> dict[str, Any]:
    if not folder:
        return {}
    try:
        return dict(json.loads((Path(folder) / "environment.json").read_text()))
    except (OSError, ValueError):
        return {}


def _append(environ: Mapping[str, str], variable: str, text: str) -> Path:
    name = environ.get(variable)
    if not name:
        raise ConfigError(f"${variable} is not set: this is not a GitHub Actions step (or the runner is too old)")
    path = Path(name)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)
    return path

