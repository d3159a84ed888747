"""One root: an environment belongs to the project directory, whatever ``-c FILE`` names; global options go anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENVKIT, Project

from envkit import load_config

CI_TOML = """
project = "proj"
backend = "native"
dotenv = ".env.ci"
[postgres]
port = "auto"
[redis]
port = "auto"
[migrations]
kind = "sql"
directory = "migrations"
[seed]
table = "users"
users = [{ username = "ci-user", password = "ci-pw" }]
[env]
APP_DATABASE = "{{ postgres.database }}"
"""

SUITE = '''
import os
import psycopg


def test_sees_the_environment_made_with_the_other_config(envkit_env):
    with psycopg.connect(envkit_env.database_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT username FROM users").fetchall() == [("ci-user",)]
    # an [env] name of the file the environment was made with, pointed at this process's database
    assert os.environ["APP_DATABASE"] == envkit_env.postgres.database != "proj_test"
'''


def checkout(root: Path) -> Path:
    """A checkout with its own envkit.toml, a sub folder, and another configuration in ci/."""
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "ci").mkdir()
    (root / "envkit.toml").write_text('project = "proj"\n')
    (root / "ci" / "envkit.ci.toml").write_text('project = "proj"\n[postgres]\nport = 6001\n')
    return root


# -- the rule, through load() ---------------------------------------------------------

def test_config_file_changes_the_settings_never_the_root(tmp_path: Path) -> None:
    root = checkout(tmp_path / "co")
    plain = load_config(root, environ={})
    for start, file in ((root, "ci/envkit.ci.toml"), (root / "sub" / "deeper", "../../ci/envkit.ci.toml"),
                        (root / "sub", str(root / "ci" / "envkit.ci.toml"))):
        chosen = load_config(start, config_file=file, environ={})
        assert chosen.postgres.port == 6001 and chosen.source == str(root / "ci" / "envkit.ci.toml")
        assert chosen.root == plain.root == root.resolve()
        assert chosen.name == plain.name and chosen.state_path == root.resolve() / ".envkit"
        assert chosen.path(".env.test") == root.resolve() / ".env.test"
        assert chosen.path("migrations") == root.resolve() / "migrations"  # paths in any file: from the project dir


def test_a_config_file_outside_the_checkout_serves_the_checkout_it_is_used_in(tmp_path: Path) -> None:
    root = checkout(tmp_path / "co")
    outside = tmp_path / "elsewhere" / "shared.toml"
    outside.parent.mkdir()
    outside.write_text('project = "proj"\n[redis]\nenabled = false\n')
    chosen = load_config(root / "sub", config_file=outside, environ={})
    assert chosen.root == root.resolve() and not chosen.redis.enabled
    assert chosen.name == load_config(root, environ={}).name


def test_without_any_config_found_the_root_is_the_working_directory(tmp_path: Path) -> None:
    here = tmp_path / "bare"
    here.mkdir()
    outside = tmp_path / "shared.toml"
    outside.write_text('project = "proj"\n')
    assert load_config(here, config_file=outside, environ={}).root == here.resolve()
    assert load_config(here, environ={}).root == here.resolve()


def test_pyproject_with_a_tool_table_is_a_root(tmp_path: Path) -> None:
    root = tmp_path / "py"
    (root / "pkg").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.envkit]\nproject = "py"\n')
    (root / "other.toml").write_text('project = "py"\n[postgres]\nport = 6002\n')
    chosen = load_config(root / "pkg", config_file="../other.toml", environ={})
    assert chosen.root == root.resolve() and chosen.postgres.port == 6002


# -- for real: up with -c in a sub folder, every other command and plain pytest elsewhere in the checkout ----------

def run_in(cwd: Path, project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ENVKIT, *args], cwd=cwd, env=project.env(), text=True, capture_output=True, timeout=180)


@pytest.mark.native
def test_an_environment_made_with_c_is_found_anywhere_in_the_checkout(project: Project) -> None:
    project.configure('backend = "native"')  # the checkout's own settings: no migrations, no users
    project.write("ci/envkit.ci.toml", f'cache_dir = "{project.cache_dir}"\n' + CI_TOML)
    project.write("migrations/001.sql", "CREATE TABLE users (id serial, username text, password_hash text);\n")
    project.write("tests/test_sees.py", SUITE)
    sub = project.root / "tests"
    root = project.root.resolve()

    up = run_in(sub, project, "-c", "../ci/envkit.ci.toml", "-q", "up")  # global options before the command
    assert up.returncode == 0 and up.stderr == "", up.stderr
    assert (root / ".envkit" / "state.json").is_file() and (root / ".env.ci").is_file()
    assert not (root / "ci" / ".envkit").exists() and not (sub / ".envkit").exists()
    try:
        for where in (root, sub, root / "ci"):
            status = run_in(where, project, "status", "--json")
            info = json.loads(status.stdout)
            assert status.returncode == 0 and info["up"] and info["healthy"], (where, status.stdout, status.stderr)
            assert info["stale"] == [], (where, info["stale"])  # judged by the files it was made from: ci/'s
        pytest_run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_sees.py"],
                                    cwd=sub, env=project.env(), text=True, capture_output=True, timeout=180)
        assert pytest_run.returncode == 0, pytest_run.stdout + pytest_run.stderr
        ran = run_in(root / "ci", project, "run", "--", sys.executable, "-c",
                     "import os; print(os.environ['PGDATABASE'])")
        assert ran.returncode == 0 and ran.stdout.strip() == "proj_test", ran.stderr
    finally:
        down = run_in(root / "ci", project, "down")
    assert down.returncode == 0 and "torn down" in down.stderr, down.stderr
    assert not (root / ".envkit" / "state.json").exists() and not (root / ".env.ci").exists()  # down without -c


@pytest.mark.native
def test_c_outside_the_checkout_keeps_the_environment_in_it(project: Project, tmp_path: Path) -> None:
    project.configure('backend = "native"')
    outside = tmp_path / "elsewhere" / "envkit.toml"
    outside.parent.mkdir()
    outside.write_text(project.config_text('backend = "native"\n[redis]\nenabled = false'))
    (project.root / "sub").mkdir()
    up = run_in(project.root / "sub", project, "up", "-c", str(outside))  # after the command, as before
    assert up.returncode == 0, up.stderr
    try:
        assert not (outside.parent / ".envkit").exists() and (project.root / ".envkit" / "state.json").is_file()
        status = json.loads(run_in(project.root, project, "--json", "status").stdout)
        assert status["up"] and status["redis_url"] is None  # the outside file's settings, the checkout's environment
    finally:
        assert run_in(project.root / "sub", project, "down").returncode == 0


@pytest.mark.native
def test_global_options_before_the_command(project: Project) -> None:
    project.configure()
    project.write("tests/test_x.py", "def test_x(envkit_env):\n    assert envkit_env.backend == 'native'\n")
    ran = project.cli("-b", "native", "-q", "-c", "envkit.toml", "test", "-q", "-p", "no:cacheprovider")
    assert ran.returncode == 0 and "1 passed" in ran.stdout, ran.stdout + ran.stderr
    assert "envkit: ok" not in ran.stderr  # -q before the command silenced the stages
    machine = project.cli("--json", "-b", "native", "run", "--", "true")
    assert machine.returncode == 0 and json.loads(machine.stdout)["ok"] is True, machine.stdout
    loud = project.cli("-v", "-v", "status")
    assert loud.returncode == 1 and "nothing is up" in loud.stdout
    assert project.cli("-x", "status").returncode == 2  # still a usage error
