"""Every subprocess envkit runs goes through here.

Argument lists only (never a shell), the command line logged, failures raised
as :class:`~envkit.errors.CommandFailed`. Long-running servers are spawned in
their own process group, marked with ``ENVKIT_SESSION`` in their environment
so leaked children can be found, and stopped with a signal to the group, then
SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from . import signals
from .errors import BinaryNotFound, CommandFailed

log = logging.getLogger("envkit")

#: The unprivileged account servers run as when envkit runs as root.
SERVICE_USER = "nobody"


@dataclass(frozen=True)
class RunAs:
    """The account a server process runs as (root is refused by Postgres)."""

    uid: int
    gid: int

    @classmethod
    def for_servers(cls) -> RunAs | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise BinaryNotFound(
                f"envkit runs as root, and servers must run as an unprivileged user, but user "
                f"{SERVICE_USER!r} does not exist; create it (useradd --system {SERVICE_USER}) or run envkit as a normal user"
            ) from None
        return cls(entry.pw_uid, entry.pw_gid)

    def chown_tree(self, path: Path) -> None:
        os.chown(path, self.uid, self.gid)
        for folder, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(folder, name), self.uid, self.gid, follow_symlinks=False)

    def can_reach(self, path: Path, *, execute: bool = False) -> bool:
        """Whether this account can get to ``path`` and read it (and run it), by its mode bits and those of every
        folder on the way (to a symlink and to its target)."""
        try:
            for target in dict.fromkeys((Path(os.path.abspath(path)), path.resolve())):
                for folder in reversed(target.parents):
                    if not self._allowed(os.stat(folder), 0o1):
                        return False
            st = os.stat(path)
        except OSError:
            return False
        wanted = 0o4 | (0o1 if execute or stat.S_ISDIR(st.st_mode) else 0)
        return self._allowed(st, wanted)

    def _allowed(self, st: os.stat_result, bits: int) -> bool:
        shift = 6 if st.st_uid == self.uid else 3 if st.st_gid == self.gid else 0
        return (st.st_mode >> shift) & bits == bits

    def popen_kwargs(self) -> dict[str, object]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    run_as: RunAs | None = None,
    timeout: float | None = None,
    check: bool = True,
    stdin: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; ``stdin``: a file fed to it."""
    argv = [str(a) for a in argv]
    log.debug("run: %s", " ".join(argv))
    try:
        with open(stdin, "rb") if stdin else nullcontext() as feed:
            result = _run(argv, env, cwd, run_as, timeout, feed)
    except FileNotFoundError:
        raise BinaryNotFound(f"cannot run {argv[0]!r}: not found; install it or put it on PATH") from None
    except subprocess.TimeoutExpired as exc:
        out = exc.output.decode() if isinstance(exc.output, bytes) else (exc.output or "")
        raise CommandFailed(argv, -1, f"timed out after {timeout} s\n{out}") from None
    signals.check()  # a child that the same Ctrl-C stopped failed because of it: report the signal
    if check and result.returncode != 0:
        raise CommandFailed(argv, result.returncode, result.stdout)
    return result


def _run(argv: list[str], env: Mapping[str, str] | None, cwd: Path | str | None, run_as: RunAs | None,
         timeout: float | None, feed: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        argv, env=dict(env) if env is not None else None, cwd=cwd, stdin=feed, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout, **(run_as.popen_kwargs() if run_as else {}),
    )


@contextmanager
def reading(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600) -> Iterator[object]:
    """Run a command and read its binary output as a stream (``with reading(argv) as out: out.read()``).

    Raises :class:`CommandFailed` with its stderr when it exits non-zero; it is
    killed when the block is left early.
    """
    argv = [str(a) for a in argv]
    log.debug("run: %s", " ".join(argv))
    try:
        proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise BinaryNotFound(f"cannot run {argv[0]!r}: not found; install it or put it on PATH") from None
    assert proc.stdout is not None and proc.stderr is not None
    try:
        yield proc.stdout
        proc.stdout.read()  # whatever the reader left
        code = proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        proc.stdout.close()
        errors = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
    signals.check()
    if code != 0:
        raise CommandFailed(argv, code, errors)


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    run_as: RunAs | None = None,
) -> subprocess.Popen[bytes]:
    """Start a long-running server in a new process group, output to ``log_path``."""
    argv = [str(a) for a in argv]
    log.debug("spawn: %s", " ".join(argv))
    with open(log_path, "ab") as out:
        if run_as:
            os.chown(log_path, run_as.uid, run_as.gid)
        return subprocess.Popen(  # type: ignore[call-overload,no-any-return]
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            **(run_as.popen_kwargs() if run_as else {}),
        )


def alive(pid: int) -> bool:
    """Whether a process exists (zombies count as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def stop_groups(
    targets: Sequence[tuple[int, int]],
    grace: float = 5.0,
    procs: list[subprocess.Popen[bytes]] | None = None,
) -> None:
    """Signal process groups ``[(pgid, signal), ...]`` at once, wait up to ``grace`` s, then SIGKILL."""
    pending = []
    for pgid, sig in targets:
        try:
            os.killpg(pgid, sig)
            pending.append(pgid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        _reap(procs)
        pending = [g for g in pending if _group_alive(g)]
        if pending:
            time.sleep(0.002)
    for pgid in pending:
        log.warning("process group %d did not stop within %.1f s; killing it", pgid, grace)
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pending and time.monotonic() < deadline:
        _reap(procs)
        pending = [g for g in pending if _group_alive(g)]
        time.sleep(0.005)
    # A multi-threaded server (Redis) shows its main thread as a zombie while other threads still exit, so
    # the group looks gone before waitpid() can collect it: wait for each signalled child of ours.
    signalled = {pgid for pgid, _ in targets}
    for proc in procs or ():
        if proc.returncode is None and proc.pid in signalled:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    _reap(procs)


def marked(pid: int, marker: str, variable: str = "ENVKIT_SESSION") -> bool:
    """Whether process ``pid`` carries ``variable=marker`` (guards against reused pids)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return f"{variable}={marker}".encode() in fh.read().split(b"\0")
    except OSError:
        return False


def end_child(record: Mapping[str, int | None] | None, label: str | None, *, sig: int = signal.SIGTERM,
              grace: float = 2.0) -> None:
    """End a command envkit handed off to, with what it started, if it still runs: ``sig``, then SIGKILL.

    ``record`` is ``{"pid": ..., "pgid": ...}`` as :func:`envkit.handoff.run_child` wrote it: with a
    process group of its own the whole group goes; in a terminal's group, the child and those of its
    descendants still in that group (servers a nested envkit started have sessions of their own, and
    their own teardown). ``label``: the session whose ``ENVKIT_NAME`` they must carry (a reused pid is
    never signalled), or None when the caller started them itself.
    """
    if not record or not record.get("pid"):
        return
    pid, pgid = int(record["pid"] or 0), record.get("pgid")

    def ours(p: int) -> bool:
        return alive(p) and (label is None or marked(p, label, "ENVKIT_NAME"))

    if pgid:
        if any(ours(p) for p in _members(int(pgid))):
            stop_groups([(int(pgid), sig)], grace=grace)
        return
    group = _stat_fields(pid)
    tree = [p for p in _descendants(pid) if ours(p) and group and _stat_fields(p)[2:3] == group[2:3]]
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)
    deadline = time.monotonic() + grace
    while any(alive(p) for p in tree) and time.monotonic() < deadline:
        time.sleep(0.01)
    for p in tree:
        if alive(p):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: state, ppid, pgrp, ...; empty when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return []


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += children.get(current, [])
    return found


def _members(pgid: int) -> list[int]:
    return [int(e.name) for e in os.scandir("/proc") if e.name.isdigit() and _stat_fields(int(e.name))[2:3] == [str(pgid)]]


def _reap(procs: list[subprocess.Popen[bytes]] | None) -> None:
    for proc in procs or ():
        proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if alive(pgid):  # the leader; cheap, and the usual answer while it stops
        return True
    # killpg(0) succeeds while zombies remain; look for a live member.
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
    return False


def which(name: str, path: str | None = None) -> str | None:
    return shutil.which(name, path=path)


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file, or an empty string."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
