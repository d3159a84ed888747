"""What the CLI shows: one line per stage with its duration, a live spinner on a terminal.

The library only logs; this module is the CLI's and the plugin's way of
turning stage events into output.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any


class StageReporter:
    """Receives ``(stage, status, seconds, detail)`` from the lifecycle."""

    def __init__(self, *, quiet: bool = False, as_json: bool = False, stream: IO[str] | None = None) -> None:
        self.quiet = quiet
        self.as_json = as_json
        self.stream = stream or sys.stderr
        self.stages: list[dict[str, Any]] = []
        self._live: Any = None
        self._tty = self.stream.isatty() and not quiet and not as_json
        self._t0 = time.perf_counter()
        self._services: dict[str, str] = {}  # service -> what it is doing, while a stage runs

    def __call__(self, stage: str, status: str, seconds: float, detail: str) -> None:
        if status == "start":
            self._services = {}
            self._spin(stage)
            return
        if status == "progress":
            service, _, what = detail.partition(": ")
            self._services[service] = what
            if self._live is not None:
                from rich.spinner import Spinner

                states = "  ".join(f"{name}: {doing}" for name, doing in self._services.items())
                self._live.update(Spinner("dots", text=f"{stage}… {seconds:.1f} s  {states}"))
            return
        self._stop_spin()
        self.stages.append({"stage": stage, "status": status, "seconds": round(seconds, 4), "detail": detail})
        if self.quiet or self.as_json:
            return
        mark = "✓" if status == "done" else "✗"
        if not self._tty:
            mark = "ok" if status == "done" else "FAILED"
        self.stream.write(f"envkit: {mark} {stage:<9} {seconds:7.3f} s  {detail}\n")
        self.stream.flush()

    def _spin(self, stage: str) -> None:
        if not self._tty:
            return
        from rich.console import Console
        from rich.live import Live
        from rich.spinner import Spinner

        self._live = Live(Spinner("dots", text=f"{stage}…"), console=Console(file=self.stream), transient=True)
        self._live.start()

    def _stop_spin(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        self._stop_spin()

    def summary(self, **extra: Any) -> str:
        return json.dumps({"stages": self.stages, "total_seconds": round(time.perf_counter() - self._t0, 4), **extra}, indent=2)


def configure_logging(verbosity: int, stream: IO[str] | None = None) -> None:
    """-q: errors only; default: warnings; -v: info; -vv: debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("envkit: %(levelname)s: %(message)s"))
    logger = logging.getLogger("envkit")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
