"""The docker backend against a real engine: compose up, health, teardown, isolation, reaping.

Needs a Docker engine with Compose v2 and the images postgres:16-alpine and
redis:7-alpine (``../shared/docker/provision.sh`` provides all three without a
registry). Nothing here pulls an image. Every test is checked afterwards for
containers, networks and volumes left with envkit's labels.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from conftest import REPO, Project, envkit_processes, need, wait_until
from forwarder import Forwarder, unix_path

import envkit
from envkit.backends import docker_reachable
from envkit.backends.docker import reaper
from envkit.errors import EXIT_ENVKIT_ERROR
from envkit.ports import free_port
from envkit.proc import alive as proc_alive

pytestmark = pytest.mark.docker

NO_ENGINE = ("no Docker engine answers (DOCKER_HOST or /var/run/docker.sock): run ../shared/docker/provision.sh as root, "
             "or start Docker and make postgres:16-alpine and redis:7-alpine available")
PASSWORD = "pa$$w'o\"r#d: ${HOME} $"  # Compose interpolation, YAML quoting and comments, all at once
BCRYPT_USER_PASSWORD = "s3cr$t:'#\""


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    need(docker_reachable(os.environ), NO_ENGINE)
    import docker

    cli = docker.from_env()
    for image in ("postgres:16-alpine", "redis:7-alpine"):
        try:
            cli.images.get(image)
        except docker.errors.ImageNotFound:
            need(False, f"image {image} is missing (never pulled here): {NO_ENGINE}")
    yield cli
    cli.close()


def ours(cli: Any, base: str) -> set[tuple[str, str]]:
    """envkit-labelled resources created by this test session (their state dir lies under pytest's tmp dir)."""
    found = set()
    for kind, items in reaper.resources(cli).items():
        for item in items:
            labels = item.attrs.get("Labels") or {}
            if labels.get(reaper.STATE, "").startswith(base):
                found.add((kind, labels[reaper.SESSION], item.id))
    return {(kind, f"{session}:{ident[:12]}") for kind, session, ident in found}


@pytest.fixture(autouse=True)
def no_docker_leaks(client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Fail a test that leaves containers, networks or volumes with envkit's labels behind."""
    base = str(tmp_path_factory.getbasetemp())
    before = ours(client, base)
    yield
    if not wait_until(lambda: ours(client, base) <= before, timeout=20):
        leaked = ours(client, base) - before
        for session in {entry.split(":")[0] for _, entry in leaked}:
            reaper.remove_session(client, session)  # so that one leak does not fail every later test
        pytest.fail(f"test left Docker resources behind: {sorted(leaked)}")


def docker_config(project: Project, body: str = "", **kw: str) -> Project:
    project.configure('backend = "docker"\n' + textwrap.dedent(body), **kw)
    return project


def session_of(project: Project) -> dict[str, Any]:
    return dict(json.loads((project.root / ".envkit" / "state.json").read_text()))


def labelled(cli: Any, session_label: str) -> dict[str, list[Any]]:
    return reaper.resources(cli, reaper.SESSION, session_label)


def listeners(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.split()[3].rsplit(":", 1)[1] == str(port)]


def app_checks(tmp: Project) -> None:
    tmp.write("tests/test_env.py", """
        import os, bcrypt, json, psycopg, redis
        def test_database():
            with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", "")) as conn:
                settings = conn.execute("select current_setting('fsync'), current_setting('synchronous_commit'), "
                                        "current_setting('full_page_writes'), current_setting('TimeZone')").fetchone()
                assert settings == ("off", "off", "off", "UTC")
                name, hashed = conn.execute('select username, password_hash from "user"').fetchone()
            users = json.load(open(os.environ["ENVKIT_USERS_FILE"]))
            assert name == users[0]["username"] == "admin"
            assert bcrypt.checkpw(users[0]["password"].encode(), hashed.encode())
            assert os.environ["PGHOST"] == "127.0.0.1"
        def test_redis():
            client = redis.Redis.from_url(os.environ["REDIS_URL"])
            assert client.ping() is True
            assert client.config_get("save") == {"save": ""} and client.config_get("appendonly") == {"appendonly": "no"}
    """)


USERS_SQL = """
CREATE TABLE "user" (id uuid PRIMARY KEY, username text UNIQUE NOT NULL, password_hash text NOT NULL, role text NOT NULL);
"""


def small_app(project: Project, extra: str = "") -> Project:
    project.write("sql/001_users.sql", USERS_SQL)
    app_checks(project)
    return docker_config(project, f"""
        {extra}
        [migrations]
        kind = "sql"
        directory = "sql"
        [seed]
        table = "user"
        generate = {{ id = "uuid4" }}
        [[seed.users]]
        username = "admin"
        password = {json.dumps(BCRYPT_USER_PASSWORD)}
        role = "admin"
    """)


# -- the whole cycle ---------------------------------------------------------------

def test_envkit_test_full_cycle(project: Project, client: Any) -> None:
    small_app(project)
    project.write("envkit.toml", project.root.joinpath("envkit.toml").read_text().replace(
        "[postgres]\n", f"[postgres]\npassword = {json.dumps(PASSWORD)}\n"))
    result = project.cli("test", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    for stage in ("start", "database", "migrate", "seed", "down"):
        assert stage in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()
    rendered = (project.root / ".envkit" / "docker-compose.test.yml").read_text()
    assert rendered.startswith("# generated by envkit, do not edit") and "$$" in rendered


def test_demo_example(tmp_path: Path, shared_cache: Path, client: Any) -> None:
    demo = Project(tmp_path / "demo", shared_cache)
    shutil.copytree(REPO / "examples" / "demo", demo.root, ignore=shutil.ignore_patterns(".envkit", "__pycache__", ".env.test"))
    env = demo.env(ENVKIT_POSTGRES_PORT="auto", ENVKIT_REDIS_PORT="auto")
    result = demo.cli("test", "--backend", "docker", "--", "-q", "-p", "no:cacheprovider", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "12 passed" in result.stdout


def test_up_status_logs_loopback_only_and_down(project: Project, client: Any) -> None:
    docker_config(project)
    project.cli("up", check=True)
    session = session_of(project)
    label = session["name"] + "-" + session["id"]
    found = labelled(client, label)
    assert len(found["containers"]) == 2 and len(found["networks"]) == 1 and not found["volumes"]
    ps = subprocess.run(["docker", "ps", "--filter", f"label=envkit.session={label}", "--format", "{{.Names}}"],
                        capture_output=True, text=True, check=True).stdout.split()
    assert sorted(name.rsplit("-", 2)[1] for name in ps) == ["postgres", "redis"]
    for container in found["containers"]:
        attrs = client.api.inspect_container(container.id)
        labels = attrs["Config"]["Labels"]
        assert labels[reaper.OWNER_PID] == str(session["owner_pid"]) and labels[reaper.OWNER_HOST] == socket.gethostname()
        assert labels[reaper.PROJECT] == "proj" and labels[reaper.STATE] == str(project.root / ".envkit")
        assert not [m for m in attrs["Mounts"] if m["Type"] == "volume"], "image VOLUMEs must be on tmpfs, not volumes"
        assert attrs["HostConfig"]["Tmpfs"]
    assert found["networks"][0].attrs["Labels"][reaper.SESSION] == label

    exports = session["exports"]
    for port in (int(exports["PGPORT"]), int(exports["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])):
        bound = listeners(port)
        assert bound and all(addr == f"127.0.0.1:{port}" for addr in bound), f"port {port} bound on {bound}"
    status = project.cli("status", check=True).stdout
    assert "up (docker backend)" in status and exports["PGPASSWORD"] not in status
    pg_logs = project.cli("logs", "postgres", check=True).stdout
    assert "==> postgres <==" in pg_logs and "ready to accept connections" in pg_logs
    assert "==> redis <==" in project.cli("logs", check=True).stdout
    assert "torn down" in project.cli("down", check=True).stderr
    assert not any(labelled(client, label).values())
    assert "nothing is up" in project.cli("down", check=True).stderr


def test_two_checkouts_in_parallel_and_one_killed(tmp_path: Path, shared_cache: Path, client: Any) -> None:
    a, b = (docker_config(Project(tmp_path / name, shared_cache)) for name in ("a", "b"))
    procs = [p.popen("up") for p in (a, b)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        sa, sb = session_of(a), session_of(b)
        assert sa["resources"]["compose"]["project"] != sb["resources"]["compose"]["project"]
        assert {sa["exports"]["PGPORT"], sa["exports"]["REDIS_URL"]}.isdisjoint({sb["exports"]["PGPORT"], sb["exports"]["REDIS_URL"]})
        for container in labelled(client, sa["name"] + "-" + sa["id"])["containers"]:
            container.kill()
        with psycopg.connect(sb["exports"]["DATABASE_URL"].replace("+psycopg", ""), connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert redis.Redis.from_url(sb["exports"]["REDIS_URL"]).ping()
    finally:
        for p in (a, b):
            p.cli("down")


def test_four_checkouts_on_default_ports_at_once_all_come_up(tmp_path: Path, shared_cache: Path, client: Any) -> None:
    """Default ports (5433, 6380), four `up` at once: Docker's port race is retried on another free port."""
    projects = [docker_config(Project(tmp_path / f"d{i}", shared_cache), "[postgres]\n[redis]\n") for i in range(4)]
    for p in projects:
        assert "port" not in (p.root / "envkit.toml").read_text()
    procs = [p.popen("up", "--timeout", "150") for p in projects]  # four first starts at once on two cores
    try:
        results = [(proc.wait(400), proc.communicate()[1]) for proc in procs]
        for code, err in results:
            assert code == 0, err
        sessions = [session_of(p) for p in projects]
        pg_ports = {s["exports"]["PGPORT"] for s in sessions}
        redis_urls = {s["exports"]["REDIS_URL"] for s in sessions}
        assert len(pg_ports) == 4 and len(redis_urls) == 4
        for s in sessions:
            with psycopg.connect(s["exports"]["DATABASE_URL"].replace("+psycopg", ""), connect_timeout=5) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            assert redis.Redis.from_url(s["exports"]["REDIS_URL"]).ping()
            found = labelled(client, s["name"] + "-" + s["id"])
            assert len(found["containers"]) == 2 and len(found["networks"]) == 1 and not found["volumes"]
    finally:
        downs = [p.cli("down") for p in projects]
    for result in downs:
        assert result.returncode == 0, result.stderr
    assert not ours(client, str(tmp_path)), "containers, networks or volumes were left"
    assert not any((p.root / ".envkit" / "state.json").exists() for p in projects)


def test_down_with_an_unreachable_engine_fails_and_keeps_the_state(project: Project, client: Any, tmp_path: Path) -> None:
    """The engine's socket dies after `up`: `down` must say it could not finish, keep the record, and finish later."""
    engine = Forwarder(unix_path(tmp_path), Path("/var/run/docker.sock")).start()
    env = project.env(DOCKER_HOST=engine.url, ENVKIT_TIMEOUT="120")  # a loaded machine: first starts are slow
    try:
        docker_config(project)
        project.cli("up", env=env, check=True)
        session = session_of(project)
        label = session["name"] + "-" + session["id"]
        engine.stop()  # the engine is gone, for envkit (the real one runs on, for everybody else)

        result = project.cli("down", env=env)
        assert result.returncode == EXIT_ENVKIT_ERROR, result.stderr
        assert "torn down" not in result.stderr
        assert f"could not finish tearing down {label}" in result.stderr and "envkit down" in result.stderr
        assert (project.root / ".envkit" / "state.json").exists()
        assert session_of(project)["teardown_failed"]
        running = labelled(client, label)["containers"]
        assert len(running) == 2 and all(c.status == "running" for c in running)
        # prune, too, refuses to forget it while the engine is away
        assert project.cli("prune", env=env).returncode == EXIT_ENVKIT_ERROR
        assert (project.root / ".envkit" / "state.json").exists()

        engine.start()  # back: `down` again finishes the job
        result = project.cli("down", env=env)
        assert result.returncode == 0 and "torn down" in result.stderr, result.stderr
        assert not any(labelled(client, label).values())
        assert not (project.root / ".envkit" / "state.json").exists()
    finally:
        engine.stop()


def test_a_run_whose_teardown_fails_keeps_its_record(project: Project, client: Any, tmp_path: Path) -> None:
    """`envkit run`'s own teardown (the lifecycle's stack, not `down`): the record outlives a failed teardown."""
    engine = Forwarder(unix_path(tmp_path), Path("/var/run/docker.sock")).start()
    env = project.env(DOCKER_HOST=engine.url, ENVKIT_TIMEOUT="120")  # a loaded machine: first starts are slow
    ready, go = tmp_path / "ready", tmp_path / "go"
    try:
        docker_config(project)
        child = (f"import pathlib, time; pathlib.Path({str(ready)!r}).touch()\n"
                 f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.05)")
        proc = project.popen("run", "--", sys.executable, "-c", child, env=env)
        assert wait_until(ready.exists, timeout=120), proc.communicate(timeout=5)
        session = session_of(project)
        label = session["name"] + "-" + session["id"]
        engine.stop()
        go.touch()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == EXIT_ENVKIT_ERROR, err
        assert f"could not finish tearing down {label}" in err
        assert session_of(project)["teardown_failed"]
        assert len(labelled(client, label)["containers"]) == 2
        engine.start()
        assert project.cli("down", env=env).returncode == 0
        assert not any(labelled(client, label).values())
        assert not (project.root / ".envkit" / "state.json").exists()
    finally:
        engine.stop()


def test_prune_finishes_a_teardown_that_failed(project: Project, client: Any, tmp_path: Path) -> None:
    engine = Forwarder(unix_path(tmp_path), Path("/var/run/docker.sock")).start()
    env = project.env(DOCKER_HOST=engine.url, ENVKIT_TIMEOUT="120")  # a loaded machine: first starts are slow
    try:
        docker_config(project)
        project.cli("up", env=env, check=True)
        session = session_of(project)
        engine.stop()
        assert project.cli("down", env=env).returncode == EXIT_ENVKIT_ERROR
        engine.start()
        result = project.cli("prune", env=env)
        assert result.returncode == 0 and session["id"] in result.stderr, result.stderr
        assert not any(labelled(client, session["name"] + "-" + session["id"]).values())
        assert not (project.root / ".envkit" / "state.json").exists()
    finally:
        engine.stop()


def test_compose_project_name_in_env_and_dotenv_cannot_redirect(project: Project, client: Any) -> None:
    docker_config(project)
    project.write(".env", "COMPOSE_PROJECT_NAME=victim\nCOMPOSE_FILE=victim.yml\n")
    decoy = client.containers.run("redis:7-alpine", ["sleep", "300"], detach=True, stop_signal="SIGKILL",
                                  labels={"com.docker.compose.project": "victim", "com.docker.compose.service": "postgres",
                                          "com.docker.compose.oneoff": "False"})
    try:
        env = project.env(COMPOSE_PROJECT_NAME="victim", COMPOSE_FILE="victim.yml")
        up = project.cli("up", env=env)
        assert up.returncode == 0, up.stderr
        assert session_of(project)["resources"]["compose"]["project"].startswith("envkit-proj-")
        project.cli("down", env=env, check=True)
        project.cli("prune", env=env, check=True)
        decoy.reload()
        assert decoy.status == "running", "envkit touched a container of another compose project"
    finally:
        volumes = [m["Name"] for m in decoy.attrs["Mounts"] if m["Type"] == "volume"]
        decoy.remove(force=True, v=True)  # v: the image declares a VOLUME
        assert not [v for v in client.volumes.list() if v.name in volumes]


KV = """
image: redis:7-alpine
command: ["redis-server", "--requirepass", {{ vars.password | q }}]
"""


def test_user_defined_services_with_each_probe(project: Project, client: Any) -> None:
    project.write("templates/kv.yml.j2", KV)
    secret = "kv$pass'#"
    tables = "".join(f"""
        [services.{name}]
        template = "kv.yml.j2"
        ports = [6379]
        probe = {probe}
        vars = {{ password = {json.dumps(secret)} }}
        [services.{name}.exports]
        {name.upper()}_URL = "redis://:{{{{ vars.password | urlencode }}}}@{{{{ host }}}}:{{{{ port }}}}/0"
    """ for name, probe in (("kv", '"tcp"'), ("kvlog", '{ log = "Ready to accept connections" }'),
                            ("kvcmd", "{ command = " + json.dumps(["redis-cli", "-a", secret, "ping"]) + " }")))
    docker_config(project, 'templates = "templates"\n[postgres]\nenabled = false\n' + tables
                  + '\n[env]\nKV_PORT = "{{ kv.port }}"\n')
    with envkit.environment(project.load()) as env:
        assert set(env.running.user) == {"kv", "kvlog", "kvcmd"}
        for name in ("kv", "kvlog", "kvcmd"):
            url = env.exports[f"{name.upper()}_URL"]
            assert redis.Redis.from_url(url).ping(), name
        assert env.exports["KV_PORT"] == str(env.running.user["kv"].port)
        assert all(addr.startswith("127.0.0.1:") for addr in listeners(int(env.exports["KV_PORT"])))
        assert len(labelled(client, env.session.label)["containers"]) == 4


# -- failing fast, with diagnostics ---------------------------------------------------

BOOM = """
image: redis:7-alpine
command: ["sh", "-c", "echo boom-on-stderr >&2; exit 3"]
"""

SICK = """
image: redis:7-alpine
command: ["redis-server"]
healthcheck:
  test: ["CMD-SHELL", "echo not-yet; exit 1"]
  interval: 200ms
  retries: {retries}
  start_period: {start_period}
"""


@pytest.mark.parametrize("ports", ["[]", "[6379]"])  # an exited container has no published port to read back
def test_service_that_exits_at_once_fails_fast_with_its_log(project: Project, client: Any, ports: str) -> None:
    project.write("boom.yml.j2", BOOM)
    docker_config(project, f'[services.boom]\ntemplate = "boom.yml.j2"\nports = {ports}\n')
    t0 = time.monotonic()
    result = project.cli("up", "--timeout", "30")
    elapsed = time.monotonic() - t0
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert elapsed < 15, f"took {elapsed:.1f} s: an exited container must fail the start at once, not at the timeout"
    assert "boom exited with code 3" in result.stderr and "boom-on-stderr" in result.stderr
    assert str(project.root / ".envkit" / "docker-compose.test.yml") in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()


@pytest.mark.parametrize(("retries", "start_period", "expect"), [
    (2, "0s", "is unhealthy"),  # fails fast, when Docker gives up on it
    (1000, "60s", "not ready within 4 s"),  # never decided: envkit's own timeout
])
def test_service_never_healthy_fails_within_the_timeout(project: Project, client: Any, retries: int, start_period: str,
                                                         expect: str) -> None:
    project.write("sick.yml.j2", SICK.format(retries=retries, start_period=start_period))
    docker_config(project, '[services.sick]\ntemplate = "sick.yml.j2"\n[postgres]\nenabled = false\n')
    t0 = time.monotonic()
    result = project.cli("up", "--timeout", "4")
    elapsed = time.monotonic() - t0
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert elapsed < 4 + 8, f"took {elapsed:.1f} s"
    assert expect in result.stderr, result.stderr
    assert "health checks" in result.stderr and "not-yet" in result.stderr  # the health-check history
    assert "log (last 30 lines)" in result.stderr and "ready to accept connections" in result.stderr.lower()  # its own log


def test_taken_port_is_named(project: Project, client: Any) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        docker_config(project, f"[postgres]\nport = {port}\n")
        result = project.cli("up")
        assert result.returncode == EXIT_ENVKIT_ERROR
        assert f"port {port}" in result.stderr and "in use" in result.stderr
    finally:
        holder.close()


# -- no leaks ------------------------------------------------------------------------

def test_twenty_up_down_cycles_leave_nothing(tmp_path: Path, shared_cache: Path, client: Any) -> None:
    """4 checkouts x 5 cycles, in parallel: every container and network goes, and no volume is ever created."""
    volumes_seen: set[str] = set()
    sessions: list[str] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        p = Project(tmp_path / f"w{index}", shared_cache)
        docker_config(p, 'watchdog = false\n[migrations]\nkind = "none"\n')
        config = p.load()
        try:
            for _ in range(5):
                with envkit.environment(config) as env:
                    assert env.running.postgres and env.running.redis
                    sessions.append(env.session.label)
                    found = labelled(client, env.session.label)
                    assert len(found["containers"]) == 2 and len(found["networks"]) == 1
                    for container in found["containers"]:
                        mounts = client.api.inspect_container(container.id)["Mounts"]
                        volumes_seen.update(m["Name"] for m in mounts if m["Type"] == "volume")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    if errors:
        raise errors[0]
    assert len(set(sessions)) == 20
    assert not volumes_seen, f"anonymous volumes were created: {volumes_seen}"
    assert not ours(client, str(tmp_path)), "containers or networks were left"
    names = {v.name for v in client.volumes.list()}
    assert not volumes_seen & names


# -- crash safety -----------------------------------------------------------------------

def _run_and_kill(project: Project) -> tuple[str, int]:
    """Start `envkit run` with a long child, SIGKILL envkit once the child runs; returns (session label, child pid)."""
    pid_file = project.root / "child.pid"
    proc = project.popen("run", "--", sys.executable, "-c",
                         f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)")
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=60), proc.communicate(timeout=5)
    session = session_of(project)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]  # the orphaned child still holds the pipes
    proc.stderr.close()  # type: ignore[union-attr]
    return session["name"] + "-" + session["id"], int(pid_file.read_text())


def test_sigkill_is_reaped_by_the_watchdog(project: Project, client: Any) -> None:
    docker_config(project)
    procs_before = envkit_processes()
    label, child = _run_and_kill(project)
    try:
        assert wait_until(lambda: not any(labelled(client, label).values()), timeout=30), "the watchdog did not tear down"
        assert wait_until(lambda: not (project.root / ".envkit" / "state.json").exists(), timeout=10)
        assert wait_until(lambda: not [c for _, c in envkit_processes() - procs_before if label in c], timeout=10), \
            "the watchdog did not exit"
        assert wait_until(lambda: not proc_alive(child), timeout=10), "the watchdog left the child running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _compose_up_running(root: Path) -> bool:
    """Whether envkit's `compose up` for the checkout at ``root`` is running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if b"ENVKIT_STARTED_BY=" not in fh.read():
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"up" in argv and str(root).encode() in argv:
            return True
    return False


def test_sigkill_during_compose_up_is_reaped_after_it_finishes(project: Project, client: Any) -> None:
    """Killed while `compose up` still creates containers: the watchdog waits for it, then removes everything."""
    docker_config(project)
    proc = project.popen("up")
    try:
        assert wait_until(lambda: _compose_up_running(project.root), timeout=60), "compose up never ran"
        label = session_of(project)["name"] + "-" + session_of(project)["id"]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert wait_until(lambda: not (project.root / ".envkit" / "state.json").exists(), timeout=60)
    assert not any(labelled(client, label).values()), "containers created after the kill were left"


def test_sigkill_without_watchdog_is_reaped_by_prune(tmp_path: Path, shared_cache: Path, client: Any) -> None:
    killed = docker_config(Project(tmp_path / "killed", shared_cache), "watchdog = false")
    kept = docker_config(Project(tmp_path / "kept", shared_cache))
    kept.cli("up", check=True)  # detached: its owner exits, and it must survive a prune
    label, child = _run_and_kill(killed)
    assert labelled(client, label)["containers"], "a SIGKILLed envkit cannot have torn anything down"
    here = {reaper.OWNER_HOST: socket.gethostname(), reaper.OWNER_PIDNS: reaper.pid_namespace(),
            reaper.STATE: str(tmp_path / "nowhere")}
    finished = subprocess.Popen(["true"])
    finished.wait()
    dead_pid = finished.pid
    live = client.containers.create("redis:7-alpine", ["true"], labels={
        **here, reaper.SESSION: "alive-0000", reaper.OWNER_PID: str(os.getpid())})
    elsewhere = client.containers.create("redis:7-alpine", ["true"], labels={  # pids of another machine: unknowable
        **here, reaper.SESSION: "elsewhere-0000", reaper.OWNER_PID: str(dead_pid), reaper.OWNER_HOST: "another-host"})
    try:
        os.kill(child, signal.SIGKILL)
        time.sleep(1.5)
        # Without a watchdog nothing reaps it by itself. (Any other envkit starting on this engine meanwhile,
        # say a concurrent test run, may: that is the "next invocation" path, so only the state is certain here.)
        dry = killed.cli("prune", "--dry-run", check=True)
        assert label in dry.stderr and (killed.root / ".envkit" / "state.json").exists()
        pruned = killed.cli("prune", "--json", check=True)
        assert label in json.loads(pruned.stdout)["removed"]
        assert not any(labelled(client, label).values())
        assert not (killed.root / ".envkit" / "state.json").exists()
        kept_session = session_of(kept)
        assert labelled(client, kept_session["name"] + "-" + kept_session["id"])["containers"], "prune removed a detached env"
        live.reload()  # its owner (this process) lives: untouched
        elsewhere.reload()
    finally:
        live.remove(force=True, v=True)
        elsewhere.remove(force=True, v=True)
        kept.cli("down")


# -- the migrated-and-seeded snapshot ------------------------------------------------------

def snapshot_entries(project: Project) -> list[Path]:
    return sorted((project.cache_dir / "snapshots").glob("docker-*"))


def test_snapshot_is_saved_restored_and_invalidated(tmp_path: Path, client: Any) -> None:
    """Cold run saves; the next restores (same rows, bcrypt hashes, a new password); a changed migration or seed misses."""
    project = Project(tmp_path / "snap", tmp_path / "cache")  # its own cache: the first run must be cold
    project.root.mkdir()
    small_app(project)

    notes: list[str] = []

    def up() -> tuple[envkit.Environment, list[tuple[Any, ...]]]:
        notes.clear()
        env = envkit.up(project.load(), reporter=lambda stage, status, s, detail: notes.append(detail)
                        if status == "progress" else None)
        with psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
            rows = conn.execute('select username, password_hash from "user" order by username').fetchall()
        return env, rows

    env, rows = up()
    with env:
        assert not env.running.restored and env.timings["migrate"] > 0
        first_password = env.running.postgres.password  # type: ignore[union-attr]
    (entry,) = snapshot_entries(project)
    assert (entry / ".complete").exists() and oct((entry / "meta.json").stat().st_mode & 0o777) == "0o600"

    env, restored_rows = up()
    with env:
        assert env.running.restored and "migrate" not in env.timings
        # per-service progress, shown live on a terminal
        assert notes[:2] == ["postgres: starting container", "redis: starting container"]
        assert "postgres: restoring the migrated and seeded snapshot" in notes
        assert any(n.startswith("postgres: ready (") for n in notes) and any(n.startswith("redis: ready (") for n in notes)
        assert restored_rows == rows and bcrypt_ok(env.users()[0]["password"], rows[0][1])
        assert env.running.postgres.password != first_password  # type: ignore[union-attr]
        with psycopg.connect(env.running.postgres.libpq(database="postgres")) as conn:  # type: ignore[union-attr]
            assert conn.execute("show full_page_writes").fetchone() == ("off",)  # forced on only while saving

    project.write("sql/002_more.sql", 'ALTER TABLE "user" ADD COLUMN nickname text;')
    project.write("envkit.toml", project.root.joinpath("envkit.toml").read_text().replace(
        'role = "admin"', 'role = "owner"'))
    env, _ = up()
    with env:
        assert not env.running.restored
        with psycopg.connect(env.running.postgres.libpq()) as conn:  # type: ignore[union-attr]
            assert conn.execute('select nickname, role from "user"').fetchall() == [(None, "owner")]
    assert len(snapshot_entries(project)) == 2

    env = envkit.up(project.load(cache=False))
    with env:
        assert not env.running.restored


def bcrypt_ok(password: str, hashed: str) -> bool:
    import bcrypt

    return bcrypt.checkpw(password.encode(), hashed.encode())


def test_broken_snapshot_falls_back_to_a_fresh_start(tmp_path: Path, client: Any) -> None:
    project = Project(tmp_path / "broken", tmp_path / "cache")
    project.root.mkdir()
    small_app(project)
    project.cli("up", check=True)
    project.cli("down", check=True)
    (entry,) = snapshot_entries(project)
    archive = entry / "pgdata.tar"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 3])  # cut off mid-file
    result = project.cli("test", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not restore the cached snapshot" in result.stderr and "2 passed" in result.stdout
    assert "from cache" not in result.stderr


def test_a_snapshot_that_cannot_be_saved_does_not_fail_the_run(tmp_path: Path, client: Any) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("the cache cannot live under a file\n")
    project = Project(tmp_path / "unsaved", blocker)
    project.root.mkdir()
    small_app(project)
    result = project.cli("test", "--", "-q", "-p", "no:cacheprovider", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "could not save a snapshot for the next run" in result.stderr and "2 passed" in result.stdout


def test_own_postgres_template_without_the_wait_is_not_restored_into(project: Project, client: Any) -> None:
    """A user's postgres partial that drops envkit's entrypoint must not get data streamed into a live init."""
    builtin = (REPO / "templates" / "services" / "postgres.yml.j2").read_text()
    project.write("templates/services/postgres.yml.j2", builtin[: builtin.index("{% if entrypoint %}")]
                  + builtin[builtin.index("{% endif %}") + len("{% endif %}\n"):])
    small_app(project, 'templates = "templates"')
    for _ in range(2):
        result = project.cli("test", "--", "-q", "-p", "no:cacheprovider", "tests")
        assert result.returncode == 0, result.stdout + result.stderr
    assert "does not render the snapshot's `entrypoint`" in result.stderr and "from cache" not in result.stderr


# -- remote engines ---------------------------------------------------------------------------

def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=envkit test CA",
        "-keyout", "ca-key.pem", "-out", "ca.pem")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (folder / f"{name}.ext").write_text(ext.replace("\\n", "\n") + "\n")
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
            "-out", f"{name}.csr")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {n: folder / f"{n}.pem" for n in ("ca", "server", "server-key", "client", "client-key")}


class TLSEngine:
    """The local engine behind TLS with client certificates: tcp://127.0.0.1:PORT, bytes piped to the socket."""

    def __init__(self, certs: dict[str, Path]) -> None:
        import ssl

        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs["ca"]))
        self.context.load_cert_chain(str(certs["server"]), str(certs["server-key"]))
        self.context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no engine
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.handshakes = 0
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import ssl

        while True:
            try:
                raw, _ = self.server.accept()
            except OSError:
                return
            try:
                conn = self.context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                self.refused += 1
                raw.close()
                continue
            self.handshakes += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, socket.socket(socket.AF_UNIX) as engine:
            engine.connect("/var/run/docker.sock")
            back = threading.Thread(target=self._pipe, args=(engine, conn), daemon=True)
            back.start()
            self._pipe(conn, engine)
            back.join(60)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)  # a half-close (exec's stdin at EOF) goes through
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


def test_tls_docker_context(project: Project, client: Any, tmp_path: Path) -> None:
    """A context made by `docker context create` with TLS certificates: SDK, Compose and exec all go through it."""
    if not os.path.exists("/var/run/docker.sock"):
        pytest.skip("the TLS proxy needs the engine's local socket")
    (tmp_path / "certs").mkdir()
    certs = make_certs(tmp_path / "certs")
    engine = TLSEngine(certs)
    try:
        env = {k: v for k, v in project.env().items() if not k.startswith("DOCKER_")}
        env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
        subprocess.run(["docker", "context", "create", "tls-box", "--docker",
                        f"host=tcp://127.0.0.1:{engine.port},ca={certs['ca']},cert={certs['client']},"
                        f"key={certs['client-key']}"], env=env, check=True, capture_output=True)
        subprocess.run(["docker", "context", "use", "tls-box"], env=env, check=True, capture_output=True)
        small_app(project)
        for attempt in ("cold", "from the snapshot"):
            result = project.cli("test", "--", "-q", "-p", "no:cacheprovider", "tests", env=env)
            assert result.returncode == 0, f"{attempt}: {result.stdout}{result.stderr}"
            assert "2 passed" in result.stdout
        assert "(snapshot)" in result.stderr, "the snapshot streamed through the TLS engine too"
        assert engine.handshakes > 3 and engine.refused == 0
        # without the context's certificates the engine refuses: the certificates were really used
        bare = {**env, "DOCKER_CONFIG": str(tmp_path / "empty"), "DOCKER_HOST": f"tcp://127.0.0.1:{engine.port}"}
        assert project.cli("up", env=bare).returncode != 0
        assert engine.refused > 0 or engine.handshakes
    finally:
        engine.close()


# -- images and the committed file -------------------------------------------------------

def test_postgres_18_data_layout_is_followed(project: Project, client: Any) -> None:
    """An image laid out like PostgreSQL 18's (PGDATA under a VOLUME /var/lib/postgresql): no anonymous volume."""
    import io

    tag = "envkit-test/pg18-layout:latest"
    dockerfile = b"FROM postgres:16-alpine\nENV PGDATA=/var/lib/postgresql/18/docker\nVOLUME /var/lib/postgresql\n"
    client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, pull=False, rm=True)
    try:
        docker_config(project, f'[postgres]\nimage = "{tag}"\n[redis]\nenabled = false\n')
        for restored in (False, True):  # the second start restores the snapshot into the image's own data path
            with envkit.environment(project.load()) as env:
                assert env.running.postgres and env.running.restored is restored
                with psycopg.connect(env.running.postgres.libpq()) as conn:
                    assert conn.execute("show data_directory").fetchone() == ("/var/lib/postgresql/18/docker",)
                (container,) = labelled(client, env.session.label)["containers"]
                attrs = client.api.inspect_container(container.id)
                assert not [m for m in attrs["Mounts"] if m["Type"] == "volume"]
                assert set(attrs["HostConfig"]["Tmpfs"]) == {"/var/lib/postgresql", "/var/lib/postgresql/data"}
    finally:
        client.images.remove(tag, force=True)


def test_committed_file_runs_with_plain_compose(project: Project, client: Any) -> None:
    pg_port, redis_port = free_port(), free_port()
    name = f"plain{os.getpid()}"
    project.write("envkit.toml", f'project = "{name}"\n[postgres]\nport = {pg_port}\npassword = {json.dumps(PASSWORD)}\n'
                                 f"[redis]\nport = {redis_port}\n")
    project.cli("render", check=True)
    compose = ["docker", "compose", "-f", "compose/docker-compose.test.yml"]
    env = project.env()
    try:
        up = subprocess.run([*compose, "up", "-d", "--wait"], cwd=project.root, env=env, capture_output=True, text=True,
                            timeout=120)
        assert up.returncode == 0, up.stderr
        url = f"postgresql://envkit:{PASSWORD}@127.0.0.1:{pg_port}/{name}_test"
        with psycopg.connect(host="127.0.0.1", port=pg_port, user="envkit", password=PASSWORD,
                             dbname=f"{name}_test", connect_timeout=5) as conn:
            assert conn.execute("select 1").fetchone() == (1,), url
        assert redis.Redis(host="127.0.0.1", port=redis_port).ping()
        assert all(addr.startswith("127.0.0.1:") for addr in listeners(pg_port) + listeners(redis_port))
    finally:
        subprocess.run([*compose, "down", "-v", "-t", "1"], cwd=project.root, env=env, capture_output=True, timeout=120)
    left = client.containers.list(all=True, filters={"label": f"envkit.project={name}"})
    assert not left


# -- signals at every moment (issue 11; the native and external cases are in test_signals.py) --------------

SLOW_PROBE = """
image: redis:7-alpine
"""


def test_sigint_while_waiting_for_containers_is_never_swallowed(project: Project, client: Any) -> None:
    """The wait's probe runs 2 s in the container and fails: a SIGINT almost surely lands inside it."""
    from signalling import start_detached

    project.write("templates/slow.yml.j2", SLOW_PROBE)
    docker_config(project, 'templates = "templates"\n[postgres]\nenabled = false\n[redis]\nenabled = false\n'
                           '[services.slow]\ntemplate = "slow.yml.j2"\n'
                           'probe = { command = ["sh", "-c", "sleep 2; exit 1"] }\n')
    proc = start_detached(["up", "--timeout", "120"], project.root, project.env())
    try:
        def started() -> bool:
            state = project.root / ".envkit" / "state.json"
            return proc.poll() is not None or (state.exists() and "containers" in session_of(project)["resources"])

        assert wait_until(started, timeout=120) and proc.poll() is None, proc.communicate()
        label = session_of(project)["name"] + "-" + session_of(project)["id"]
        time.sleep(3)  # the probe is running
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)  # before: swallowed, the wait went on to its timeout (or up, exit 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted by SIGINT during start" in err
    assert not (project.root / ".envkit" / "state.json").exists()
    assert not any(labelled(client, label).values())


def test_a_signal_during_a_migration_is_named_docker(project: Project, client: Any) -> None:
    from signalling import interrupt_a_migration

    returncode, err = interrupt_a_migration(project, signal.SIGTERM, 'backend = "docker"\n[redis]\nenabled = false\n')
    assert returncode == 143, err  # before: 3, "alembic upgrade head failed ... Fix the migration"
    assert "interrupted by SIGTERM during migrate" in err and "Fix the migration" not in err
    assert not (project.root / ".envkit" / "state.json").exists()


def test_github_cancel_with_a_child_that_ignores_sigint_docker(project: Project, client: Any) -> None:
    """SIGINT, 7.5 s, SIGTERM, 2.5 s, SIGKILL of the tree: teardown must be over before the kill."""
    from signalling import alive, cancel_like_github, counting_child, received, start_detached

    docker_config(project)
    record = project.root / "signals.txt"
    proc = start_detached(["run", "--", *counting_child(record, ignore_int=True)], project.root, project.env())
    pid_file = Path(f"{record}.pid")
    assert wait_until(pid_file.exists, timeout=180), proc.communicate(timeout=5)
    label = session_of(project)["name"] + "-" + session_of(project)["id"]
    t0 = time.monotonic()
    step = cancel_like_github(proc)
    elapsed = time.monotonic() - t0
    _, err = proc.communicate(timeout=10)
    # checked at once, not after the leak check's grace: this is what the job's next run would find
    left = {kind: [getattr(x, "name", x) for x in items] for kind, items in labelled(client, label).items() if items}
    assert step != "SIGKILL", f"envkit needed the runner's SIGKILL ({elapsed:.1f} s); left: {left}\n{err}"
    assert proc.returncode == 130, err
    assert not left, left
    assert not (project.root / ".envkit" / "state.json").exists()
    assert received(record) == ["SIGTERM"] and not alive(int(pid_file.read_text()))


def test_an_image_service_without_a_template_runs_and_waits_on_its_first_port(project: Project, client: Any) -> None:
    """image + docker_command + named ports: no template to write; envkit renders the service."""
    docker_config(project, textwrap.dedent('''\
        [postgres]
        enabled = false
        [redis]
        enabled = false
        [services.cache]
        image = "redis:7-alpine"
        ports = { resp = 6379 }
        docker_command = ["redis-server", "--port", "{{ ports.resp }}", "--dir", "{{ data_dir }}"]
        [services.cache.exports]
        CACHE_URL = "redis://{{ host }}:{{ ports.resp }}/0"
    '''))
    with envkit.environment(project.load()) as env:
        cache = env.running.user["cache"]
        assert env.exports["CACHE_URL"] == f"redis://127.0.0.1:{cache.ports['resp']}/0"
        assert redis.Redis.from_url(env.exports["CACHE_URL"]).ping()
        assert env.session.services["cache"]["container_ports"] == {"resp": 6379}
        label = env.session.label
    assert not any(labelled(client, label).values())
