"""Signals at every moment, for real: a wait that never ends, a migration, the hand-over, the imports, a child.

Each test sends a real signal to a real envkit process (or a real Ctrl-C on a pseudo-terminal) and checks
the exit code, what it says, and that nothing is left behind (conftest's leak checks). The docker cases
are in test_docker.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from conftest import ENVKIT, Project, need, processes_of, wait_until
from signalling import (
    Terminal,
    alive,
    cancel_like_github,
    counting_child,
    interrupt_a_migration,
    received,
    start_detached,
)

from envkit import EnvkitError, Interrupted, signals
from envkit.backends.native.binaries import find_postgres, find_redis

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"  # the machine's own server: test_external.py


def _need_native() -> None:
    try:
        find_postgres(None, os.environ)
        find_redis(None, os.environ)
    except EnvkitError as exc:
        need(False, f"native servers need PostgreSQL and Redis binaries: {exc}")


def _need_external() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
    except OSError:
        need(False, "the machine's PostgreSQL on 127.0.0.1:5432 (the external backend's stand-in)")


def _databases() -> set[str]:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_an_interruption_is_no_exception() -> None:
    """What the 29 `except Exception` sites rely on: they cannot catch it."""
    assert not issubclass(Interrupted, Exception) and not issubclass(Interrupted, EnvkitError)
    assert issubclass(Interrupted, KeyboardInterrupt)
    exc = Interrupted(signal.SIGTERM)
    exc.stage = "migrate"
    assert (str(exc), exc.exit_code) == ("interrupted by SIGTERM during migrate", 143)


# -- 1. while envkit waits --------------------------------------------------------------

@pytest.fixture
def mute_server() -> Iterator[tuple[int, threading.Event]]:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Event()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)
            accepted.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_waiting_for_a_server_is_not_taken_for_not_ready(
        project: Project, mute_server: tuple[int, threading.Event], sig: int, code: int) -> None:
    """The issue's repro: a server that accepts and never answers, `--timeout 15`, a signal once envkit waits."""
    port, accepted = mute_server
    project.configure('backend = "external"\n[redis]\nenabled = false\n')
    env = project.env(DATABASE_URL=f"postgresql://postgres@127.0.0.1:{port}/postgres")
    proc = start_detached(["up", "--timeout", "15"], project.root, env)
    try:
        assert accepted.wait(60), "envkit never connected"
        time.sleep(1)  # well inside the wait: the probe has connected and hangs
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == code, err  # before: 3, a ready-timeout 15 s later
    assert f"interrupted by {signal.Signals(sig).name} during start" in err and "did not succeed" not in err
    assert not (project.root / ".envkit" / "state.json").exists()


# -- 2. during a migration --------------------------------------------------------------

@pytest.mark.native
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_a_migration_is_named_native(project: Project, sig: int, code: int) -> None:
    _need_native()
    before = processes_of(project.root)
    returncode, err = interrupt_a_migration(project, sig, 'backend = "native"')
    assert returncode == code, err  # before: 3, "alembic upgrade head failed: ... Fix the migration"
    assert f"interrupted by {signal.Signals(sig).name} during migrate" in err
    assert "Fix the migration" not in err and "Traceback" not in err
    assert wait_until(lambda: processes_of(project.root) <= before, 10)
    assert not (project.root / ".envkit" / "state.json").exists()


@pytest.mark.external
def test_a_signal_during_a_migration_is_named_external(project: Project) -> None:
    _need_external()
    name = f"sig{os.getpid()}"  # other suites use this server at the same time: only this project's databases count
    returncode, err = interrupt_a_migration(
        project, signal.SIGINT, f'backend = "external"\n[postgres]\nurl = "{ADMIN_URL}"\n[redis]\nenabled = false\n',
        project_name=name)
    assert returncode == 130, err
    assert "interrupted by SIGINT during migrate" in err and "Fix the migration" not in err
    assert not [d for d in _databases() if d.startswith(name)], "the database envkit created was not dropped"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:  # the query was cancelled, not left sleeping
        assert not conn.execute("SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(6)%'").fetchall()


# -- 3. after up, and while envkit loads ------------------------------------------------

@pytest.mark.native
def test_sigterm_right_after_up_finished_tears_down_and_says_so(project: Project) -> None:
    """SIGTERM while `envkit up` prints the connection (its stdout a full pipe, so it stays there)."""
    _need_native()
    before = processes_of(project.root)
    project.configure('backend = "native"')
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        while True:
            os.write(write_end, b"x" * 65536)
    except BlockingIOError:
        pass  # full: envkit's first write to stdout (the connection, after up) blocks
    os.set_blocking(write_end, True)
    proc = subprocess.Popen([*ENVKIT, "up", "--json"], cwd=project.root, env=project.env(), stdout=write_end,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    os.close(write_end)
    try:
        def writing() -> bool:
            with open(f"/proc/{proc.pid}/wchan") as fh:
                return fh.read().endswith("pipe_write")  # (anon_)pipe_write: blocked writing to the pipe
        assert wait_until(writing, timeout=120), "envkit never got to printing the connection"
        state = project.root / ".envkit" / "state.json"
        assert state.exists()
        os.kill(proc.pid, signal.SIGTERM)
        drain = threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 65536), b"")], daemon=True)
        drain.start()
        _, err = proc.communicate(timeout=60)
        drain.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.close(read_end)
    assert proc.returncode == 143, err
    assert "interrupted by SIGTERM" in err and "torn down" in err, err  # before: 143, the environment still up
    assert not state.exists()
    assert wait_until(lambda: processes_of(project.root) <= before, 10)


def test_sigint_while_envkit_loads_prints_no_traceback(project: Project) -> None:
    """A Ctrl-C while the CLI still imports its modules: one line, exit 130, no KeyboardInterrupt traceback."""
    project.configure('backend = "native"')
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "envkit.cli", "up"], cwd=project.root,
                            env=project.env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # -X importtime: one line per module as it finishes loading
        lines.append(line)
        if line.rstrip().endswith(" click"):  # loaded by envkit.cli, long before the command runs
            os.kill(proc.pid, signal.SIGINT)
            break
    rest = proc.stderr.read()
    proc.wait(30)
    proc.stderr.close()
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert "interrupted by SIGINT" in out
    assert not (project.root / ".envkit" / "state.json").exists()


def test_a_signal_during_teardown_takes_effect_after_it(tmp_path: Path) -> None:
    """signals.deferred: noted during the block, raised when it is over (in a process of its own)."""
    code = """
import os, signal, sys
from envkit import signals, Interrupted
signals.install()
finished = False
try:
    with signals.deferred():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        finished = True
except Interrupted as exc:
    print(finished, exc.signum, signals.count())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", str(int(signal.SIGTERM)), "2"], result.stderr


# -- 4. CI cancellation --------------------------------------------------------------------

@pytest.mark.native
def test_github_cancel_with_a_child_that_ignores_sigint_native(project: Project) -> None:
    _need_native()
    before = processes_of(project.root)
    project.configure('backend = "native"')
    record = project.root / "signals.txt"
    proc = start_detached(["run", "--", *counting_child(record, ignore_int=True)], project.root, project.env())
    pid_file = Path(f"{record}.pid")
    assert wait_until(pid_file.exists, timeout=120), proc.communicate(timeout=5)
    step = cancel_like_github(proc)
    _, err = proc.communicate(timeout=10)
    child = int(pid_file.read_text())
    assert step == "SIGINT", f"envkit was still there at the {step} step\n{err}"  # before: SIGKILL, 10 s
    assert proc.returncode == 130, err
    assert received(record) == ["SIGTERM"], "the child ignores SIGINT: it gets SIGTERM"
    assert not alive(child)
    assert not (project.root / ".envkit" / "state.json").exists()
    assert processes_of(project.root) <= before


# -- 5. one Ctrl-C, one SIGINT ----------------------------------------------------------

@pytest.mark.native
@pytest.mark.parametrize("attempt", [1, 2])  # before the fix the kernel merged the two copies in about half the runs
def test_ctrl_c_in_a_terminal_reaches_the_child_once(project: Project, attempt: int) -> None:
    """A real pseudo-terminal: ^C goes to its foreground process group, envkit and the child alike."""
    _need_native()
    project.configure('backend = "native"')
    record = project.root / "signals.txt"
    term = Terminal(["run", "--", *counting_child(record)], project.root, project.env())
    assert wait_until(Path(f"{record}.pid").exists, timeout=120), term.text
    term.ctrl_c()
    code = term.wait(60)
    assert received(record) == ["SIGINT"], (received(record), term.text)  # before: SIGINT twice (the terminal's, and envkit's copy)
    assert code == 130, term.text
    assert "Traceback" not in term.text
    assert not (project.root / ".envkit" / "state.json").exists()


@pytest.mark.native
def test_sigint_to_envkit_alone_is_passed_on_once(project: Project) -> None:
    """No terminal (CI, an IDE): the child is in a process group of its own, and gets exactly one copy."""
    _need_native()
    project.configure('backend = "native"')
    record = project.root / "signals.txt"
    proc = start_detached(["run", "--", *counting_child(record)], project.root, project.env())
    assert wait_until(Path(f"{record}.pid").exists, timeout=120)
    os.killpg(proc.pid, signal.SIGINT)  # envkit's whole group, as `timeout -s INT` or a runner may: not the child's
    _, err = proc.communicate(timeout=60)
    assert received(record) == ["SIGINT"], (received(record), err)
    assert proc.returncode == 130, err


def test_foreground_is_false_without_a_terminal() -> None:
    code = "from envkit import signals; print(signals.foreground())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            start_new_session=True)
    assert result.stdout.strip() == "False", result.stderr
    assert signals.HANDLED == (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)



def test_background_imports_finish_before_the_interpreter_exits(tmp_path: Path) -> None:
    """A daemon thread frozen by shutdown in the middle of an import keeps its lock for ever: envkit waits for it."""
    (tmp_path / "slowmod.py").write_text(f"import pathlib, time\ntime.sleep(1)\npathlib.Path({str(tmp_path / 'done')!r}).write_text('x')\n")
    code = "from envkit import lifecycle; lifecycle._preimport('slowmod')"  # and exit at once
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "done").exists(), "the interpreter exited in the middle of the background import"


def test_a_signal_is_not_raised_into_the_import_systems_bookkeeping(tmp_path: Path) -> None:
    """Raised there, it could leave a module lock held; it is raised a moment later instead."""
    (tmp_path / "grab.py").write_text("import sys\nframe = sys._getframe(1)\n")  # the import system's own frame
    code = """
import signal, sys, time
from envkit import Interrupted, signals
import grab
assert grab.frame.f_code.co_filename.startswith("<frozen importlib"), grab.frame.f_code.co_filename
signals.install()
signals._received.append(signal.SIGINT)
signals._raise_or_postpone(grab.frame)  # postponed: no exception here
try:
    time.sleep(5)  # the retry timer raises it in ordinary code
except Interrupted as exc:
    print("raised", exc.signum)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["raised", str(int(signal.SIGINT))], result.stderr
