"""Hand-off: the command an environment was brought up for (``envkit test``, ``envkit run``), run as envkit's child.

Signals reach it as if it ran alone: in a terminal's foreground it shares
envkit's process group; anywhere else it has its own, and envkit passes each
signal on once, then escalates to SIGTERM and SIGKILL (:data:`CHILD_GRACE`).
It is recorded in the session, so that the watchdog or the next ``envkit
down`` ends it (with its group) when envkit itself is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from . import signals
from .errors import EnvkitError, Interrupted
from .proc import end_child

if TYPE_CHECKING:
    from .state import Session

log = logging.getLogger("envkit")


#: After a signal, how long the child has to exit before SIGTERM, then before SIGKILL (a further signal cuts
#: either short). With teardown after it, this fits CI cancellation: GitHub Actions sends SIGINT, SIGTERM
#: 7.5 s later, and kills the whole tree 2.5 s after that.
CHILD_GRACE = (3.0, 1.5)


def run_child(argv: Sequence[str], env: dict[str, str], cwd: Path | None = None, session: Session | None = None) -> int:
    """Run a command; on a signal, pass it on once, give the child a moment, then SIGTERM, then SIGKILL.

    In the foreground of a terminal the child shares envkit's process group (Ctrl-C, Ctrl-Z and a debugger
    reading the terminal work as if it ran alone): the terminal's SIGINT or SIGHUP reaches it directly and
    is not sent again. Anywhere else (CI, an IDE, a service) it gets a process group of its own, and every
    signal is passed on exactly once, to that group. ``session``: the child is recorded there, so that the
    watchdog (or the next ``envkit down``) can end it when envkit is killed.
    """
    shared = signals.foreground()
    with signals.deferred(then_raise=False):  # raised in the middle of this, a signal would orphan the child
        try:
            proc = subprocess.Popen(list(argv), env=env, cwd=cwd, process_group=None if shared else 0)
        except FileNotFoundError:
            raise EnvkitError(f"cannot run {argv[0]!r}: command not found") from None
        if session is not None:
            session.resources["child"] = {"pid": proc.pid, "pgid": None if shared else proc.pid}
            session.save()
    try:
        signals.check()
        code = proc.wait()
        if session is not None:  # gone: nothing for a watchdog to end, and its pid may be reused
            session.resources.pop("child", None)
            session.save()
        return code
    except Interrupted as exc:
        with signals.deferred(then_raise=False):
            _stop_child(proc, exc.signum, shared)
        raise


def _stop_child(proc: subprocess.Popen[bytes], signum: int, shared: bool) -> None:
    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if shared:
                os.kill(proc.pid, sig)
            else:
                os.killpg(proc.pid, sig)

    if proc.poll() is None and not (shared and signum in (signal.SIGINT, signal.SIGHUP)):
        send(signum)  # the terminal sent these to the whole foreground group already
    seen = signals.count()
    for grace, sig in zip(CHILD_GRACE, [s for s in (signal.SIGTERM, signal.SIGKILL) if s != signum], strict=False):
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline and signals.count() == seen:
            time.sleep(0.01)
        if proc.poll() is not None:
            break
        seen = signals.count()
        log.warning("the command (pid %d) is still running; sending it %s", proc.pid, signal.Signals(sig).name)
        send(sig)
    if proc.poll() is None:  # SIGKILLed: gone in a moment
        proc.wait()
    end_child({"pid": proc.pid, "pgid": None if shared else proc.pid}, None)  # what it left running in its group
