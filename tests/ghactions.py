"""A small stand-in for the GitHub Actions runner: runs a workflow job's steps (and composite actions) locally.

What it does as the runner does: ``${{ }}`` expressions over inputs, env,
steps, matrix, job and github; ``if:`` with success()/failure()/always();
each step's run script in bash with fresh ``GITHUB_ENV``, ``GITHUB_OUTPUT``,
``GITHUB_STEP_SUMMARY`` and ``GITHUB_PATH`` files, whose contents (heredoc
syntax included) feed later steps; workflow commands on stdout and stderr
(``::add-mask::``, ``::error``, ``::stop-commands::``). ``uses:`` of this
repository's action runs action.yml; other actions are recorded, not run.
It is a test tool, not an emulator: only what envkit's workflows use.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_CONTEXTS = ("inputs", "env", "steps", "matrix", "github", "runner", "job", "strategy")
_PATH = re.compile(r"\b(" + "|".join(_CONTEXTS) + r")((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[[^\]]+\])*)")


@dataclass
class StepResult:
    name: str
    outcome: str  # success, failure, skipped
    stdout: str = ""
    stderr: str = ""
    github_env: str = ""  # what the step wrote to $GITHUB_ENV
    github_output: str = ""
    summary: str = ""
    uses: str | None = None
    with_: dict[str, str] = field(default_factory=dict)
    id: str | None = None


@dataclass
class Job:
    """The state of one job while its steps run."""

    workdir: Path
    env: dict[str, str]
    matrix: dict[str, Any] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    action_path: Path | None = None  # where action.yml of `uses: <this repo>` lives
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    results: list[StepResult] = field(default_factory=list)
    masks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    failed: bool = False

    @property
    def log(self) -> str:
        """Everything the steps printed, as the job's log (before masking)."""
        return "".join(r.stdout + r.stderr for r in self.results)


def parse_env_file(text: str) -> dict[str, str]:
    """The runner's reading of $GITHUB_ENV / $GITHUB_OUTPUT: NAME=value lines and NAME<<DELIM heredocs."""
    out: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip():
            continue
        eq, heredoc = line.find("="), line.find("<<")
        if eq >= 0 and (heredoc < 0 or eq < heredoc):
            out[line[:eq]] = line[eq + 1:]
            continue
        if heredoc < 0:
            raise ValueError(f"invalid line in file command: {line!r}")
        name, delim = line[:heredoc], line[heredoc + 2:]
        body: list[str] = []
        while True:
            if i >= len(lines):
                raise ValueError(f"no closing delimiter {delim!r} for {name}")
            if lines[i] == delim:
                i += 1
                break
            body.append(lines[i])
            i += 1
        out[name] = "\n".join(body)
    return out


def unescape(data: str) -> str:
    return data.replace("%0A", "\n").replace("%0D", "\r").replace("%25", "%")


def evaluate(expr: str, ctx: dict[str, Any], status: dict[str, bool]) -> Any:
    """A ``${{ }}`` expression: context paths, literals, == != && || !, status functions, contains()."""
    def lookup(root: str, path: str) -> Any:
        value: Any = ctx.get(root, {})
        for part in re.findall(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[([^\]]+)\]", path):
            key = part[0] or part[1].strip("'\"")
            value = value.get(key, "") if isinstance(value, dict) else ""
        return value

    code = _PATH.sub(lambda m: f"_lookup({m.group(1)!r}, {m.group(2)!r})", expr)
    code = code.replace("&&", " and ").replace("||", " or ")
    code = re.sub(r"!(?!=)", " not ", code)
    names = {
        "_lookup": lookup, "true": True, "false": False, "null": None,
        "success": lambda: not status["failed"], "failure": lambda: status["failed"],
        "always": lambda: True, "cancelled": lambda: False,
        "contains": lambda a, b: str(b).lower() in str(a).lower(),
    }
    return eval(code, {"__builtins__": {}}, names)  # our own workflow files only, no builtins


def substitute(text: Any, ctx: dict[str, Any], status: dict[str, bool]) -> str:
    if text is None:
        return ""
    if isinstance(text, bool):
        return "true" if text else "false"
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _str(evaluate(m.group(1), ctx, status)), str(text))


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def run_job(workflow: Path, job_id: str, job: Job, *, is_this_action: re.Pattern[str]) -> Job:
    """Run ``job_id`` of ``workflow`` with the given job state (env, matrix, services) in ``job.workdir``."""
    spec = yaml.safe_load(workflow.read_text())["jobs"][job_id]
    ctx = _ctx(job)
    for key, value in (spec.get("env") or {}).items():
        job.env[key] = substitute(value, ctx, {"failed": False})
    for step in spec["steps"]:
        _run_step(step, job, is_this_action=is_this_action)
    return job


def _ctx(job: Job, inputs: dict[str, str] | None = None, steps: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "env": dict(job.env), "matrix": job.matrix, "inputs": inputs or {},
        "steps": steps if steps is not None else job.steps,
        "job": {"services": job.services, "status": "failure" if job.failed else "success"},
        "github": {"workspace": str(job.workdir), "action_path": str(job.action_path or ""), "job": "test"},
        "runner": {"temp": str(job.workdir / ".runner-temp"), "os": "Linux"},
    }


def _run_step(step: dict[str, Any], job: Job, *, is_this_action: re.Pattern[str], inputs: dict[str, str] | None = None,
              steps: dict[str, Any] | None = None, outputs_to: dict[str, Any] | None = None) -> None:
    status = {"failed": job.failed}
    ctx = _ctx(job, inputs, steps)
    name = substitute(step.get("name") or step.get("run") or step.get("uses"), ctx, status)
    scope = steps if steps is not None else job.steps
    condition = step.get("if")
    if condition is not None:
        text = str(condition).strip()
        text = text[3:-2] if text.startswith("${{") else text
        if not re.search(r"\b(success|failure|always|cancelled)\(", text):
            text = f"success() && ({text})"
        if not evaluate(text, ctx, status):
            job.results.append(StepResult(name, "skipped"))
            if step.get("id"):
                scope[step["id"]] = {"outputs": {}, "outcome": "skipped"}
            return
    elif job.failed:
        job.results.append(StepResult(name, "skipped"))
        return
    env = {**job.env, **{k: substitute(v, ctx, status) for k, v in (step.get("env") or {}).items()}}
    with_ = {k: substitute(v, ctx, status) for k, v in (step.get("with") or {}).items()}
    if "uses" in step:
        uses = step["uses"]
        if is_this_action.search(uses) or uses == "./":
            result = _run_action(job, name, with_, env, is_this_action)
        else:
            result = StepResult(name, "success", uses=uses, with_=with_)
            job.results.append(result)
    else:
        result = _run_script(job, name, step, env, ctx, status)
    result.id = step.get("id")
    if step.get("id"):
        scope[step["id"]] = {"outputs": parse_env_file(result.github_output), "outcome": result.outcome}
    if result.outcome == "failure":
        job.failed = True


def _run_action(job: Job, name: str, with_: dict[str, str], env: dict[str, str], is_this_action: re.Pattern[str]) -> StepResult:
    assert job.action_path is not None, "job.action_path: where action.yml is"
    action = yaml.safe_load((job.action_path / "action.yml").read_text())
    inputs = {k: str(v.get("default", "")) for k, v in action.get("inputs", {}).items()}
    unknown = set(with_) - set(inputs)
    assert not unknown, f"{name}: inputs {unknown} are not defined by action.yml"
    inputs.update(with_)
    inner_steps: dict[str, Any] = {}
    saved_env, job.env = job.env, dict(env)  # the step's env: for the action's steps only
    first = len(job.results)
    try:
        for step in action["runs"]["steps"]:
            _run_step(step, job, is_this_action=is_this_action, inputs=inputs, steps=inner_steps)
    finally:
        job.env = saved_env
    inner = job.results[first:]
    for r in inner:  # what the action's steps wrote to $GITHUB_ENV is for the job's later steps
        job.env.update(parse_env_file(r.github_env))
    ctx = _ctx(job, inputs, inner_steps)
    outputs = {k: substitute(v.get("value"), ctx, {"failed": job.failed}) for k, v in action.get("outputs", {}).items()}
    del job.results[first:]
    outcome = "failure" if any(r.outcome == "failure" for r in inner) else "success"
    result = StepResult(name, outcome, stdout="".join(r.stdout for r in inner), stderr="".join(r.stderr for r in inner),
                        github_env="".join(r.github_env for r in inner), summary="".join(r.summary for r in inner),
                        github_output="".join(f"{k}={v}\n" for k, v in outputs.items()), uses="this action", with_=with_)
    job.results.append(result)
    return result


def _run_script(job: Job, name: str, step: dict[str, Any], env: dict[str, str], ctx: dict[str, Any],
                status: dict[str, bool]) -> StepResult:
    files = job.workdir / ".runner-temp" / f"step{len(job.results)}"
    files.mkdir(parents=True, exist_ok=True)
    paths = {k: files / k.lower() for k in ("GITHUB_ENV", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY", "GITHUB_PATH")}
    for path in paths.values():
        path.write_text("")
    script = files / "script.sh"
    script.write_text(substitute(step["run"], ctx, status))
    shell = step.get("shell", "bash")
    argv = ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)] if shell == "bash" else ["bash", "-e", str(script)]
    cwd = job.workdir / substitute(step.get("working-directory", "."), ctx, status)
    run_env = {**env, **{k: str(v) for k, v in paths.items()}, "GITHUB_ACTIONS": "true", "CI": "true",
               "GITHUB_WORKSPACE": str(job.workdir), "RUNNER_TEMP": str(job.workdir / ".runner-temp")}
    if job.action_path is not None:
        run_env["GITHUB_ACTION_PATH"] = str(job.action_path)
    proc = subprocess.run(argv, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=300)
    result = StepResult(name, "success" if proc.returncode == 0 else "failure", proc.stdout, proc.stderr,
                        paths["GITHUB_ENV"].read_text(), paths["GITHUB_OUTPUT"].read_text(),
                        paths["GITHUB_STEP_SUMMARY"].read_text())
    for stream in (proc.stdout, proc.stderr):
        _commands(stream, job)
    job.env.update(parse_env_file(result.github_env))
    for line in paths["GITHUB_PATH"].read_text().splitlines():
        job.env["PATH"] = f"{line}{os.pathsep}{job.env.get('PATH', '')}"
    job.results.append(result)
    return result


def _commands(text: str, job: Job) -> None:
    stopped: str | None = None
    for line in text.splitlines():
        if stopped is not None:
            if line == f"::{stopped}::":
                stopped = None
            continue
        if line.startswith("::stop-commands::"):
            stopped = line[len("::stop-commands::"):]
        elif line.startswith("::add-mask::"):
            job.masks.append(unescape(line[len("::add-mask::"):]))
        elif line.startswith("::error"):
            job.errors.append(line)
