"""Helpers for the signal tests: a CI cancellation as GitHub Actions does it, children that count signals, a pty."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from conftest import ENVKIT

#: GitHub Actions, when a run is cancelled: SIGINT, 7.5 s later SIGTERM, 2.5 s later SIGKILL of the whole tree.
GITHUB_CANCEL = ((signal.SIGINT, 7.5), (signal.SIGTERM, 2.5))


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as fh:
                children.setdefault(int(fh.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
        except (OSError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def cancel_like_github(proc: subprocess.Popen[str]) -> str:
    """Cancel ``proc`` as GitHub Actions cancels a job; returns the last step it needed ("SIGINT", "SIGTERM" or "SIGKILL").

    The kill of the tree is what the runner does when the process is still there after 10 s: whatever
    envkit had not torn down by then is left behind.
    """
    for sig, wait in GITHUB_CANCEL:
        os.kill(proc.pid, sig)
        try:
            proc.wait(wait)
            return signal.Signals(sig).name
        except subprocess.TimeoutExpired:
            continue
    for pid in descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)
    return "SIGKILL"


def counting_child(record: Path, *, ignore_int: bool = False, linger: float = 1.5) -> list[str]:
    """A command that writes its pid, appends each SIGINT/SIGTERM it receives to ``record``, and exits ``linger``
    seconds after the first SIGINT (so a second, duplicated one is counted too); ``ignore_int``: it ignores SIGINT.

    It counts deliveries, not handler calls: Python runs a handler once for two signals that arrive close
    together, but writes one byte per delivery to the wakeup fd.
    """
    code = f"""
import os, signal, sys, time
record = {str(record)!r}
wake_r, wake_w = os.pipe()
os.set_blocking(wake_r, False)
os.set_blocking(wake_w, False)
signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
first = []
def note(signum, frame):
    if signum == signal.SIGINT and not first:
        first.append(time.monotonic())
signal.signal(signal.SIGINT, signal.SIG_IGN if {ignore_int} else note)
signal.signal(signal.SIGTERM, note)
open(record + ".pid", "w").write(str(os.getpid()))
def drain():
    try:
        got = os.read(wake_r, 100)
    except BlockingIOError:
        return
    with open(record, "a") as fh:
        fh.write("".join(signal.Signals(b).name + chr(10) for b in got))
    if signal.SIGTERM in got:
        sys.exit(143)
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not (first and time.monotonic() - first[0] > {linger}):
    drain()  # busy, never asleep: each signal is taken the moment it is sent
drain()
sys.exit(130 if first else 0)
"""
    return [sys.executable, "-c", code]


def received(record: Path) -> list[str]:
    return record.read_text().split() if record.exists() else []


class Terminal:
    """envkit on a pseudo-terminal of its own: the session leader, its process group the terminal's foreground."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.master, slave = os.openpty()
        self.output = bytearray()

        def controlling_tty() -> None:
            os.setsid()
            import fcntl

            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([*ENVKIT, *args], cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=controlling_tty)
        os.close(slave)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")  # the terminal's line discipline sends SIGINT to its foreground group

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            time.sleep(0.1)
            os.close(self.master)
            self._reader.join(5)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")


SLEEPING_REVISION = '''
import pathlib

from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    pathlib.Path({marker!r}).write_text("x")
    op.execute("SELECT pg_sleep(6)")


def downgrade():
    pass
'''


def start_detached(args: Sequence[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``envkit ARGS`` without a controlling terminal, as in CI (so a developer's terminal changes nothing)."""
    return subprocess.Popen([*ENVKIT, *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)


def interrupt_a_migration(project: object, sig: int, config: str, project_name: str = "proj") -> tuple[int, str]:
    """``envkit up`` with an Alembic revision that sleeps 6 s in the database; ``sig`` while it sleeps.

    Returns envkit's exit code and stderr."""
    from conftest import Project, wait_until
    from projects import ALEMBIC_INI, ENV_PY

    assert isinstance(project, Project)
    marker = project.root / "migration-started"
    project.write("alembic.ini", ALEMBIC_INI)
    project.write("migrations/env.py", ENV_PY)
    project.write("migrations/script.py.mako", "")
    project.write("migrations/versions/0001_sleep.py", SLEEPING_REVISION.format(marker=str(marker)))
    text = project.config_text(config + '\n[migrations]\nkind = "alembic"\n')
    project.write("envkit.toml", text.replace('project = "proj"', f'project = "{project_name}"', 1))
    proc = start_detached(["up", "--timeout", "120"], project.root, project.env())
    try:
        assert wait_until(marker.exists, timeout=180), "the migration never started"
        time.sleep(0.5)  # inside pg_sleep
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err
