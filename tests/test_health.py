"""An environment left up is checked before it is used: a dropped database, a killed server, a removed container.

Each test breaks a real environment the way a suite or a user does, then
checks that ``status`` says what is gone (exit 1), ``doctor`` fails, ``up``,
``test``, ``run`` and plain ``pytest`` refuse with ``envkit up --replace`` as
the fix, and that ``envkit up --replace`` really recovers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import Project, need, wait_until

from envkit.errors import EXIT_ENVKIT_ERROR

FIX = "envkit up --replace"

SUITE = '''
import os

import psycopg


def _server():
    return psycopg.connect(host=os.environ["PGHOST"], port=os.environ["PGPORT"], user=os.environ["PGUSER"],
                           password=os.environ["PGPASSWORD"], dbname="postgres", autocommit=True)


def test_uses_the_database(envkit_db):
    with _server() as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_needs_nothing():
    assert True
'''

DROPS = '''
from test_suite import _server


def test_drops_the_environment_s_database(envkit_env):
    """What some suites' session fixtures do to `<project>_test`."""
    with _server() as conn:
        conn.execute('DROP DATABASE "proj_test" WITH (FORCE)')
'''


def pytest_run(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain `pytest` in the project, as a developer runs it after `envkit up`."""
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
                          cwd=project.root, env=project.env(), text=True, capture_output=True, timeout=180)


def state(project: Project) -> dict[str, Any]:
    return dict(json.loads((project.root / ".envkit" / "state.json").read_text()))


def assert_refused(project: Project, gone: str) -> None:
    """Every way of using the environment says what is gone and how to fix it."""
    status = project.cli("status")
    assert status.returncode == 1 and f"gone: {gone}" in status.stdout and FIX in status.stdout, status.stdout
    machine = json.loads(project.cli("status", "--json").stdout)
    assert machine["up"] is True and machine["healthy"] is False
    assert any(gone in g["detail"] for g in machine["gone"]), machine["gone"]
    doctor = project.cli("doctor")
    assert doctor.returncode == 1 and "FAIL     environment" in doctor.stdout and gone in doctor.stdout, doctor.stdout
    assert "not ready: environment" in doctor.stdout
    for command in (["up"], ["test"], ["run", "--", "true"]):
        refused = project.cli(*command)
        assert refused.returncode == EXIT_ENVKIT_ERROR, (command, refused.stderr)
        assert "is broken" in refused.stderr and gone in refused.stderr and FIX in refused.stderr, (command, refused.stderr)
        assert "Traceback" not in refused.stderr
    (project.root / "tests" / "conftest-imported").unlink(missing_ok=True)
    plain = pytest_run(project, "tests/test_suite.py")  # stops before any conftest can read another database
    said = plain.stdout + plain.stderr
    assert plain.returncode == EXIT_ENVKIT_ERROR, said
    assert gone in said and FIX in said and "passed" not in said and "Traceback" not in said, said
    assert not (project.root / "tests" / "conftest-imported").exists(), "the conftest was imported"


def assert_recovers(project: Project, *up_args: str) -> None:
    replaced = project.cli("up", "--replace", *up_args, check=True)
    assert "torn down, to be replaced" in replaced.stderr
    status = project.cli("status", check=True)
    assert "BROKEN" not in status.stdout and "gone" not in status.stdout
    ran = pytest_run(project, "tests/test_suite.py")
    assert ran.returncode == 0 and "2 passed" in ran.stdout, ran.stdout + ran.stderr
    assert project.cli("test", "tests/test_suite.py").returncode == 0


CONFTEST = '''
from pathlib import Path

Path(__file__).with_name("conftest-imported").touch()  # what an app reading its settings at import would do first
'''


def suite(project: Project, body: str = "") -> None:
    project.configure(body)
    project.write("tests/test_suite.py", SUITE)
    project.write("tests/conftest.py", CONFTEST)


# -- native -------------------------------------------------------------------------

@pytest.mark.native
def test_a_suite_that_drops_the_database_gets_a_clear_refusal_next_time(project: Project) -> None:
    suite(project, 'backend = "native"')
    project.write("tests/test_drops.py", DROPS)
    project.cli("up", check=True)
    healthy = project.cli("status", check=True)
    assert "up (native backend)" in healthy.stdout and "gone" not in healthy.stdout
    assert "ok       environment" in project.cli("doctor").stdout

    first = pytest_run(project)  # passes: the damage shows only on the next run
    assert first.returncode == 0, first.stdout + first.stderr

    assert_refused(project, "the database proj_test on 127.0.0.1:")
    assert_recovers(project)

    exports = state(project)["exports"]  # the template the clones are made from: as much a part of it
    with psycopg.connect(host=exports["PGHOST"], port=exports["PGPORT"], user=exports["PGUSER"],
                         password=exports["PGPASSWORD"], dbname="postgres", autocommit=True) as conn:
        template = (state(project).get("template_database") or "proj_test")
        conn.execute(f'DROP DATABASE "{template}" WITH (FORCE)')
    status = project.cli("status")
    assert status.returncode == 1 and f"gone: the database {template} on" in status.stdout, status.stdout
    project.cli("down", check=True)


@pytest.mark.native
def test_killed_servers_are_named(project: Project) -> None:
    suite(project, 'backend = "native"')
    project.cli("up", check=True)
    processes = state(project)["resources"]["processes"]
    os.killpg(processes["redis"]["pgid"], signal.SIGKILL)
    assert wait_until(lambda: project.cli("status").returncode == 1, timeout=20)
    assert_refused(project, f"redis (pid {processes['redis']['pid']}) is no longer running")

    os.killpg(processes["postgres"]["pgid"], signal.SIGKILL)
    assert wait_until(lambda: "postgres (pid" in project.cli("status").stdout, timeout=20)
    status = project.cli("status").stdout
    assert "gone: redis (pid" in status and f"gone: postgres (pid {processes['postgres']['pid']})" in status, status
    assert_recovers(project)
    project.cli("down", check=True)


# -- docker ---------------------------------------------------------------------------

@pytest.fixture
def docker_checked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An engine with the images; afterwards, no Docker resource of this session's projects is left."""
    from test_docker import NO_ENGINE, ours

    from envkit.backends import docker_reachable

    need(docker_reachable(os.environ), NO_ENGINE)
    import docker

    client = docker.from_env()
    base = str(tmp_path_factory.getbasetemp())
    before = ours(client, base)
    try:
        yield client
        assert wait_until(lambda: ours(client, base) <= before, timeout=20), ours(client, base) - before
    finally:
        client.close()


@pytest.mark.docker
def test_a_removed_container_is_named(project: Project, docker_checked: Any) -> None:
    suite(project, 'backend = "docker"')
    project.cli("up", check=True)
    container = state(project)["resources"]["containers"]["postgres"]
    docker_checked.containers.get(container).remove(force=True)
    assert_refused(project, f"postgres's container {container[:12]} was removed")
    assert_recovers(project)
    project.cli("down", check=True)


@pytest.mark.docker
def test_a_dropped_database_in_a_container_is_named(project: Project, docker_checked: Any) -> None:
    suite(project, 'backend = "docker"')
    project.write("tests/test_drops.py", DROPS)
    project.cli("up", check=True)
    assert pytest_run(project).returncode == 0
    assert_refused(project, "the database proj_test on 127.0.0.1:")
    assert_recovers(project)
    project.cli("down", check=True)


# -- external ---------------------------------------------------------------------------

def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.external
def test_the_external_backend_s_dropped_database_is_named(project: Project) -> None:
    """Only databases envkit creates on the machine's server: its own, dropped here as a suite would."""
    from test_external import ADMIN_URL, server_databases

    need(_answers(5432), "the machine's PostgreSQL on 127.0.0.1:5432")
    before = server_databases()
    suite(project, f'backend = "external"\n[postgres]\nurl = "{ADMIN_URL}"\n[redis]\nenabled = false\n')
    project.cli("up", check=True)
    names = []
    try:
        names.append(state(project)["exports"]["PGDATABASE"])
        assert names[0].startswith("proj_test_") and names[0] not in before
        with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(names[0])))
        assert_refused(project, f"the database {names[0]} on 127.0.0.1:5432 no longer exists")
        assert_recovers(project)
        names.append(state(project)["exports"]["PGDATABASE"])
    finally:
        project.cli("down")
    after = server_databases()  # other suites use this server at the same time: look at ours only
    assert not {db for db in after for name in names if db == name or db.startswith(f"{name}_")}, after


# -- speed: measured in bench/health.py, not asserted here; this checks it looks at the live state -----------

@pytest.mark.native
def test_the_check_itself_sees_each_part(project: Project) -> None:
    from envkit import health
    from envkit.state import read

    suite(project, 'backend = "native"')
    project.cli("up", check=True)
    try:
        session = read(Path(project.root / ".envkit" / "state.json"))
        assert session is not None
        assert health.check(session).ok
        health.require(session)
        broken = session.resources["processes"]["redis"] = {"pid": os.getpid(), "pgid": os.getpgid(0)}  # not a server
        found = health.check(session)
        assert [g.what for g in found.gone] == ["redis"] and str(broken["pid"]) in found.gone[0].detail
    finally:
        project.cli("down", check=True)
