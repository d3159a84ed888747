"""The watchdog: a detached process that tears an environment down when its owner is killed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Project, envkit_processes, envkit_run_dirs, need, wait_until

from envkit import state, watchdog
from envkit.proc import alive as proc_alive


def watchdogs(label: str) -> list[int]:
    return [pid for pid, cmd in envkit_processes() if "watchdog.py" in cmd and label in cmd]


@pytest.fixture
def owner() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _watched(project: Project, owner_pid: int) -> state.Session:
    project.configure()
    config = project.load(backend="native")
    session = state.begin(config, "native")
    session.owner_pid = owner_pid
    session.save()
    watchdog.start(config, session)
    assert wait_until(lambda: bool(watchdogs(session.label)), timeout=5)
    return session


def test_exits_when_the_session_ends_normally(project: Project, owner: subprocess.Popen[bytes]) -> None:
    session = _watched(project, owner.pid)
    session.remove()
    assert wait_until(lambda: not watchdogs(session.label), timeout=5)
    assert owner.poll() is None


def test_exits_when_the_session_is_handed_over(project: Project, owner: subprocess.Popen[bytes]) -> None:
    session = _watched(project, owner.pid)
    session.detached = True
    session.save()
    owner.kill()
    assert wait_until(lambda: not watchdogs(session.label), timeout=5)
    assert session.file.exists(), "a detached environment belongs to `envkit down`, not to the watchdog"
    session.remove()


def test_tears_down_when_the_owner_dies(project: Project, owner: subprocess.Popen[bytes]) -> None:
    session = _watched(project, owner.pid)
    owner.kill()
    assert wait_until(lambda: not session.file.exists(), timeout=10), "the watchdog did not tear the session down"
    assert wait_until(lambda: not watchdogs(session.label), timeout=5)
    assert "torn down" in (session.path / watchdog.LOG_FILE).read_text()


@pytest.mark.native
def test_sigkilled_native_run_is_reaped_without_another_command(project: Project) -> None:
    from envkit.backends.native.binaries import find_postgres, find_redis
    from envkit.errors import BinaryNotFound

    try:
        find_postgres(None, os.environ)
        find_redis(None, os.environ)
    except BinaryNotFound as exc:
        need(False, f"native servers need PostgreSQL and Redis binaries: {exc}")
    procs, dirs = envkit_processes(), envkit_run_dirs()
    pid_file = project.root / "child.pid"
    project.configure()
    # the child starts one of its own: the watchdog must end both (they would go on against servers that are gone)
    proc = project.popen("run", "--backend", "native", "--", sys.executable, "-c",
                         "import os, subprocess, time; grandchild = subprocess.Popen(['sleep', '300']); "
                         f"open({str(pid_file)!r}, 'w').write(f'{{os.getpid()}} {{grandchild.pid}}'); time.sleep(60)")
    assert wait_until(lambda: pid_file.exists() and pid_file.read_text() != "", timeout=60)
    pids = [int(p) for p in pid_file.read_text().split()]
    run_dir = Path(state.load(project.load()).resources["run_dir"])  # type: ignore[union-attr]
    assert run_dir.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    proc.stdout.close()  # type: ignore[union-attr]
    proc.stderr.close()  # type: ignore[union-attr]
    try:
        assert wait_until(lambda: not run_dir.exists(), timeout=20), "the watchdog did not stop the servers"
        # the state file goes last (after the spare for the next start is copied)
        assert wait_until(lambda: not (project.root / ".envkit" / "state.json").exists(), timeout=10)
        assert wait_until(lambda: envkit_processes() <= procs and envkit_run_dirs() <= dirs, timeout=10)
        assert wait_until(lambda: not any(proc_alive(p) for p in pids), timeout=10), "the child or its child still runs"
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", ["session ended", "handed over"])
def test_a_watchdog_with_nothing_to_watch_is_waited_for_when_its_starter_exits(project: Project, how: str) -> None:
    # Its handle stays in watchdog._started until the next start(); one never waited for said
    # "ResourceWarning: subprocess N is still running" when the interpreter collected it at exit
    # (at the end of every full run of this suite). Handed over, `envkit up` exits before it sees so.
    project.configure()
    script = """
import sys, time
from pathlib import Path
import envkit
from envkit import state, watchdog

config = envkit.load_config(Path(sys.argv[1]), overrides={"backend": "native"})
session = state.begin(config, "native")
watchdog.start(config, session)
[proc] = watchdog._started.values()
print(proc.pid, flush=True)
time.sleep(0.3)  # let it start watching
if sys.argv[2] == "handed over":
    session.detached = True
    session.save()
else:
    session.remove()  # the watchdog exits on its own
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and watchdog.alive(proc.pid):  # a zombie counts as gone
        time.sleep(0.02)
    assert not watchdog.alive(proc.pid)
assert proc.returncode is None, "not yet waited for"
"""
    result = subprocess.run([sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", script,
                             str(project.root), how], cwd=project.root, env=project.env(), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    assert "ResourceWarning" not in result.stderr, result.stderr
    assert not proc_alive(pid), "the watchdog outlived a session it had no more to watch"
    if how == "handed over":
        state.load(project.load()).remove()  # type: ignore[union-attr]
