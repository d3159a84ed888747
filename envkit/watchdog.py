"""A detached process that tears an environment down when its owner dies without doing so.

Python's exit handlers do not run on SIGKILL, an IDE's stop button or an OOM
kill, so :func:`envkit.lifecycle.up` starts one watchdog per environment:
``python envkit/watchdog.py STATE_DIR SESSION OWNER_PID ROOT [CONFIG_FILE]``,
in a session of its own (a Ctrl-C in the terminal does not reach it). It
waits on the owner's pidfd (or polls its pid) and re-reads ``state.json``:

- the session is gone or replaced: torn down normally; exit;
- the session was handed over (``envkit up`` detaches it): exit;
- the owner died: wait for the subprocesses it left (a ``docker compose up``
  still creating containers) to finish, tear the session down through
  :func:`envkit.recorded.teardown_session` (which first ends the command
  ``envkit test``/``run`` handed off to, with its process group: the tests
  must not go on against servers that are gone), exit.

It works for every backend. Its limits: it dies with the machine or the
container it runs in (then the next envkit invocation on that checkout, or
``envkit prune`` for Docker, reaps), and a kill of the whole process group
or tree from outside (some CI runners) kills it too.
"""

from __future__ import annotations

# Only the standard library at the top: the watchdog runs as a script so that
# it starts in milliseconds and does not compete for the CPU with the services
# it watches; envkit itself is imported only when there is something to tear down.
import atexit
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Config
    from .state import Session

log = logging.getLogger("envkit")
STATE_FILE = "state.json"  # envkit.state.STATE_FILE, without importing envkit

POLL = 1.0  # seconds between looks at state.json while the owner lives
LEFTOVER_GRACE = 60.0  # seconds to let the owner's subprocesses finish before tearing down
LOG_FILE = "watchdog.log"
#: Marks short-lived helpers (``compose up``) started for a session; ENVKIT_SESSION marks its servers and the watchdog.
STARTED_BY = "ENVKIT_STARTED_BY"
_started: dict[int, subprocess.Popen[bytes]] = {}
_watching: dict[int, tuple[Path, str]] = {}  # pid: (state directory, session label) of each in _started


def _reap_started() -> None:
    """At exit: wait for the watchdogs this process started that have nothing left to watch.

    One left in ``_started`` was never waited for: collected at interpreter exit, its handle said
    "ResourceWarning: subprocess N is still running" (a zombie counts as running until waited for).
    One whose session ended or was handed over (``envkit up`` exits right after) would see so within
    :data:`POLL`: it is stopped now. One still watching a session is left to run: it outlives this
    process by design, to tear the session down.
    """
    for pid, proc in list(_started.items()):
        if proc.poll() is None:
            state_dir, label = _watching[pid]
            data = _read(state_dir)
            if data == {} or (data and not data.get("detached") and f"{data.get('name')}-{data.get('id')}" == label):
                continue  # still watching (or the state is being rewritten): it goes on without us
            proc.terminate()  # its default SIGTERM: it exits at once
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                continue
        del _started[pid]
        _watching.pop(pid, None)


atexit.register(_reap_started)


def start(config: Config, session: Session) -> Callable[[], None]:
    """Start the watchdog for ``session``; returns a function that stops it (for a normal teardown)."""
    from .proc import spawn

    # -P: this folder is not put on sys.path; PYTHONPATH: the very envkit that started it, installed or not
    argv = [sys.executable, "-P", __file__, str(session.path), session.label, str(session.owner_pid), str(config.root)]
    if config.source != "defaults":
        argv.append(config.source)
    package_parent = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [package_parent, config.environ.get("PYTHONPATH")]))
    env = {**config.environ, "ENVKIT_SESSION": session.label, "PYTHONPATH": python_path}
    for pid, old in list(_started.items()):  # reap those that ended on their own (handed over, torn down)
        if old.poll() is not None:
            del _started[pid]
            _watching.pop(pid, None)
    import shutil

    nice = shutil.which("nice")  # its start-up (an interpreter, ~50 ms of CPU) yields to the run it watches
    proc = spawn([nice, "-n", "10", *argv] if nice else argv, log_path=session.path / LOG_FILE, env=env, cwd=config.root)
    _started[proc.pid] = proc  # it outlives a detached Environment: keep the handle, reap it later
    _watching[proc.pid] = (session.path, session.label)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except Exception:  # noqa: BLE001 - a watchdog that will not stop is killed; teardown goes on
                proc.kill()
                proc.wait()
        _started.pop(proc.pid, None)
        _watching.pop(proc.pid, None)

    return stop


def watch(state_dir: Path, label: str, owner: int, root: Path, config_file: str | None) -> str:
    """Block until the watch ends; returns why."""
    pidfd = _pidfd(owner)
    while True:
        data = _read(state_dir)
        if data == {}:
            time.sleep(0.05)  # being rewritten (it is replaced atomically, so this is rare): look again
            continue
        if data is None or f"{data.get('name')}-{data.get('id')}" != label:
            return "session ended"
        if data.get("detached"):
            return "session handed over"
        if not alive(owner):
            break
        if pidfd is not None:
            select.select([pidfd], [], [], POLL)
        else:
            time.sleep(POLL / 2)
    log.warning("owner %d of %s died without tearing it down; tearing it down", owner, label)
    _wait_for_leftovers(label, data)
    latest = _read(state_dir)  # what the owner recorded last, after its subprocesses finished
    if latest and f"{latest.get('name')}-{latest.get('id')}" == label:
        data = latest
    _teardown(state_dir, data, root, config_file)
    return "torn down"


def _teardown(state_dir: Path, data: dict[str, object], root: Path, config_file: str | None) -> None:
    from envkit import config as config_mod
    from envkit import recorded
    from envkit.backends import by_name
    from envkit.errors import EnvkitError
    from envkit.proc import end_child
    from envkit.state import Session

    known = set(Session.__dataclass_fields__) - {"path"}
    session = Session(path=state_dir, **{k: v for k, v in data.items() if k in known})  # type: ignore[arg-type]
    try:
        config = config_mod.load(root, config_file=config_file)
    except EnvkitError as exc:
        log.warning("cannot read the configuration (%s); tearing down without it", exc)
        end_child(session.resources.get("child"), session.label)
        by_name(session.backend).teardown(session)
        session.remove()
        return
    recorded.teardown_session(config, session)


def _wait_for_leftovers(label: str, data: dict[str, object]) -> None:
    """Let processes the owner started for this session (not its servers) finish: they may still create things."""
    resources = data.get("resources") or {}
    servers = {info["pgid"] for info in (resources.get("processes") or {}).values()} if isinstance(resources, dict) else set()
    deadline = time.monotonic() + LEFTOVER_GRACE
    while time.monotonic() < deadline and _leftovers(label, servers):
        time.sleep(0.1)


def _leftovers(label: str, servers: set[int]) -> list[int]:
    markers = {f"ENVKIT_SESSION={label}".encode(), f"{STARTED_BY}={label}".encode()}
    me = os.getpid()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if markers.isdisjoint(fh.read().split(b"\0")):
                    continue
            if int(pid) != me and os.getpgid(int(pid)) not in servers and alive(int(pid)):
                found.append(int(pid))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    """envkit.proc.alive: whether a process exists, zombies counting as gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _read(state_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((state_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being rewritten: look again next time
    return data if isinstance(data, dict) else None


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s envkit-watchdog[%(process)d]: %(message)s")
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a terminal's Ctrl-C or hang-up is for the owner, who tears down itself
    state_dir, label, owner, root, *rest = argv
    reason = watch(Path(state_dir), label, int(owner), Path(root), rest[0] if rest else None)
    if reason == "torn down":
        log.warning("%s: torn down", label)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
