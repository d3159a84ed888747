"""The first thing the CLI does: until envkit.signals takes over, a signal ends the process at once.

Nothing has been started yet, so there is nothing to tear down; only the standard library's ``os`` and
``signal`` (both loaded with the interpreter) are imported, so the window without it is the
interpreter's own start.
"""

import os
import signal

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def exit_now(signum: int, frame: object) -> None:
    try:
        os.write(2, f"envkit: interrupted by {signal.Signals(signum).name}; nothing was started\n".encode())
    except OSError:
        pass
    os._exit(128 + signum)


def install() -> None:
    for sig in HANDLED:
        signal.signal(sig, exit_now)
