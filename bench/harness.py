"""The measuring machinery: interleaved rounds, medians, pair-by-pair ratios, runner processes.

Every sample runs in a fresh process (a runner under bench/runners/, or an
anchor's own pytest) that prints one ``BENCH-RESULT {json}`` line. Contenders
are interleaved (A B C, A B C, ...) so that drift and the load of other work on
the machine hit them alike, and a ratio is computed inside each round, then
the median of those ratios is reported.
"""

from __future__ import annotations

import json
import os
import pwd
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RUNNERS = BENCH / "runners"
PROJECT_PYTHON = Path(sys.executable)
MARK = "BENCH-RESULT "


@dataclass(frozen=True)
class User:
    """An unprivileged account (servers and anchors run as it when the bench runs as root)."""

    name: str
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, *paths: Path) -> None:
        for path in paths:
            os.chown(path, self.uid, self.gid)


def unprivileged() -> User | None:
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam("nobody")
    return User("nobody", entry.pw_uid, entry.pw_gid)


class SampleFailed(Exception):
    """A runner failed; the round records the error and goes on."""


def run_json(argv: Sequence[str | Path], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
             user: User | None = None, timeout: float = 600, require: bool = True) -> dict[str, Any]:
    """Run a runner process; return its BENCH-RESULT document plus ``wall`` (spawn to exit) and ``peak_kb``.

    ``peak_kb`` is the process' own peak RSS (wait4's ru_maxrss; not its servers', which run in other groups).
    """
    argv = [str(a) for a in argv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=dict(env) if env is not None else None, cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **(user.popen_kwargs() if user else {}))
    chunks: dict[str, str] = {}
    readers = [threading.Thread(target=lambda name, fh: chunks.__setitem__(name, fh.read()), args=(name, fh))
               for name, fh in (("out", proc.stdout), ("err", proc.stderr))]
    for reader in readers:
        reader.start()
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    _, status, usage = os.wait4(proc.pid, 0)  # wait4, not wait: it also tells the peak RSS
    wall = time.perf_counter() - t0
    killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    for fh in (proc.stdout, proc.stderr):
        if fh:
            fh.close()
    out, err = chunks.get("out", ""), chunks.get("err", "")
    peak = usage.ru_maxrss
    docs = [line[len(MARK):] for line in out.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or (require and not docs):
        tail = "\n".join(out.strip().splitlines()[-15:] + err.strip().splitlines()[-10:])
        name = next((Path(a).name for a in argv[1:] if not a.startswith("-")), argv[0])
        raise SampleFailed(f"{name} exited {proc.returncode}:\n{tail}")
    result = dict(json.loads(docs[-1])) if docs else {}
    result["wall"] = wall
    result["peak_kb"] = peak
    return result


def free_port(avoid: set[int] | None = None) -> int:
    """A free loopback port below the ephemeral range (never 5432 or 6379: the machine's own servers)."""
    import random
    import socket

    taken = {5432, 6379} | (avoid or set())
    for _ in range(500):
        port = random.randrange(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port between 20000 and 32000")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for runners: no envkit or connection settings leaking in from the caller's shell."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ENVKIT_", "PG", "PYTEST_", "TESTCONTAINERS_", "COMPOSE_"))
           and k not in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(extra)
    return env


# -- rounds -------------------------------------------------------------------------------------

@dataclass
class Contender:
    """One way of doing the measured thing. ``run(round)`` returns a sample document (``ready`` at least)."""

    key: str
    label: str
    run: Callable[[int], dict[str, Any]]
    group: str = ""
    note: str = ""


@dataclass
class Series:
    key: str
    label: str
    group: str
    note: str
    samples: list[dict[str, Any] | None] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def values(self, metric: str = "ready") -> list[float | None]:
        return [s.get(metric) if s else None for s in self.samples]

    def median(self, metric: str = "ready") -> float | None:
        vals = [v for v in self.values(metric) if v is not None]
        return statistics.median(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        metrics = sorted({k for s in self.samples if s for k, v in s.items() if isinstance(v, (int, float))})
        return {"label": self.label, "group": self.group, "note": self.note, "errors": self.errors,
                "median": {m: self.median(m) for m in metrics}, "samples": self.samples}


def interleave(contenders: Sequence[Contender], runs: int, say: Callable[[str], None], metric: str = "ready",
               ) -> dict[str, Series]:
    """Run A B C ..., ``runs`` rounds; a failed sample is recorded as None with its error."""
    series = {c.key: Series(c.key, c.label, c.group, c.note) for c in contenders}
    for rnd in range(runs):
        for c in contenders:
            try:
                sample = c.run(rnd)
            except SampleFailed as exc:
                series[c.key].samples.append(None)
                series[c.key].errors.append(str(exc))
                say(f"  round {rnd + 1}/{runs} {c.key:<32} FAILED: {str(exc).splitlines()[0]}")
                continue
            sample.setdefault("load1", loadavg()[0])  # the machine's 1-minute load average when it ended
            series[c.key].samples.append(sample)
            say(f"  round {rnd + 1}/{runs} {c.key:<32} {sample.get(metric, float('nan')):9.4f} s")
    return series


def pair_ratios(a: Series, b: Series, metric: str = "ready", metric_b: str | None = None) -> dict[str, Any]:
    """a/b inside each round, then the median of the ratios."""
    ratios = [x / y for x, y in zip(a.values(metric), b.values(metric_b or metric), strict=False)
              if x is not None and y is not None and y > 0]
    return {"kind": "ratio", "a": a.key, "b": b.key, "metric": metric, "pairs": ratios,
            "median": statistics.median(ratios) if ratios else None}


def pair_differences(a: Series, b: Series, metric: str = "ready") -> dict[str, Any]:
    """a-b inside each round, then the median of the differences."""
    diffs = [x - y for x, y in zip(a.values(metric), b.values(metric), strict=False) if x is not None and y is not None]
    return {"kind": "difference", "a": a.key, "b": b.key, "metric": metric, "pairs": diffs, "median": statistics.median(diffs) if diffs else None}


# -- the machine ---------------------------------------------------------------------------------

def loadavg() -> list[float]:
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as fh:
        mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "tmpfs": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        "user": "root (servers and anchors run as nobody)" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name,
    }


def tool_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name, argv in {"postgres": ["postgres", "--version"], "redis": ["redis-server", "--version"],
                       "docker": ["docker", "version", "--format", "{{.Server.Version}}"],
                       "compose": ["docker", "compose", "version", "--short"]}.items():
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
            out[name] = (res.stdout.strip().splitlines() or ["?"])[0] if res.returncode == 0 else "unavailable"
        except (OSError, subprocess.SubprocessError):
            out[name] = "unavailable"
    return out
