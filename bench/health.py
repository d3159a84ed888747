"""What the health check (envkit.health) adds to each reuse of an environment left up, e.g. every plain `pytest`.

    .venv/bin/python bench/health.py [--runs 200] [--backend native|docker|external|all]

Brings an environment up (a bare project in a temporary folder; external: the
machine's PostgreSQL at 127.0.0.1:5432, a database of envkit's own), then, in
interleaved rounds, times:

- ``health.check``: what was added;
- its parts: the per-backend look (pids, containers) and the database query;
- the floor: one plain ``psycopg.connect`` + ``SELECT 1`` to the same server
  as the same role, which no check that asks the server can undercut;
- ``recorded.check_fresh``: all the plugin's ``_locate`` pays before tests run.

Prints medians (ms) and the load average before and after; tears down.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # imported before timing: the plugin has it imported when it checks

import envkit
from envkit import health, recorded
from envkit.workspace import endpoints


def _median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000


def bench(backend: str, runs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="envkit-bench-health-") as tmp:
        root = Path(tmp) / "proj"
        root.mkdir()
        body = f'project = "proj"\nbackend = "{backend}"\n[postgres]\nport = "auto"\n[redis]\nport = "auto"\n'
        if backend == "external":
            body = 'project = "proj"\nbackend = "external"\n[postgres]\nurl = "postgresql://postgres@127.0.0.1:5432/postgres"\n' \
                   '[redis]\nenabled = false\n'
        (root / "envkit.toml").write_text(body)
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ENVKIT_") and k not in ("DATABASE_URL", "REDIS_URL")}
        config = envkit.load_config(root, environ=environ)
        with envkit.environment(config) as env:
            session = env.session
            pg, _ = endpoints(session)
            assert pg is not None and health.check(session).ok

            def floor() -> None:
                with psycopg.connect(pg.libpq(), autocommit=True, connect_timeout=2) as conn:
                    conn.execute("SELECT 1").fetchone()

            parts: dict[str, Callable[[], object]] = {
                "health.check": lambda: health.check(session),
                "  backend look": lambda: health._BACKENDS[backend](session),
                "  database query": lambda: health._database(session),
                "floor: connect + SELECT 1": floor,
                "recorded.check_fresh": lambda: recorded.check_fresh(config, session),
            }
            rounds: dict[str, list[float]] = {name: [] for name in parts}
            for _ in range(5):  # interleaved: load changes hit every row alike
                for name, fn in parts.items():
                    rounds[name].append(_median_ms(fn, max(runs // 5, 1)))
        print(f"{backend}: medians of 5 rounds of {max(runs // 5, 1)} calls each")
        for name, values in rounds.items():
            print(f"  {name:<28} {statistics.median(values):7.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--backend", default="native", choices=("native", "docker", "external", "all"))
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for backend in ("native", "docker", "external") if args.backend == "all" else (args.backend,):
        bench(backend, args.runs)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
