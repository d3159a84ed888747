"""One envkit environment, timed in-process: load_config + up() + the common probe, then down().

Run with the project's venv (envkit is measured from there):
    python envkit_up.py ROOT [--cache-dir DIR | --no-cache] [--no-spare] [--backend native|docker] [--expect-users N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import memory
import probe
import psycopg  # noqa: F401 - imported before the clock, as for every contender

from envkit import load_config, up  # the API imported before the clock, as every anchor's is (envkit's package is lazy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--cache-dir")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--no-spare", action="store_true", help="cache_spare = false: copy from the cache")
    parser.add_argument("--backend", default="native")
    parser.add_argument("--expect-users", type=int, default=0)
    parser.add_argument("--profile", help="write a pyinstrument text profile of up()+down() to this file")
    args = parser.parse_args()

    overrides: dict[str, object] = {"backend": args.backend}
    if args.no_cache:
        overrides["cache"] = False
    elif args.cache_dir:
        overrides["cache_dir"] = args.cache_dir
    if args.no_spare:
        overrides["cache_spare"] = False
    profiler = _profiler() if args.profile else None

    t0 = time.perf_counter()
    config = load_config(args.root, overrides=overrides)
    env = up(config)
    query = "SELECT count(*) FROM users" if args.expect_users else "SELECT 1"
    rows = probe.postgres(env.database_url, query)
    probe.redis(*probe.redis_url(env.redis_url))
    ready = time.perf_counter() - t0

    pg, rd = env.running.postgres, env.running.redis
    assert pg and rd
    if args.expect_users and rows != args.expect_users:
        raise SystemExit(f"expected {args.expect_users} seeded users, found {rows}")
    if args.backend == "native":
        services = memory.services_kb([pg.port, rd.port])
    else:
        services = memory.containers_kb(_containers([pg.port, rd.port]))
    peak = memory.self_peak_kb()
    t1 = time.perf_counter()
    env.down()
    teardown = time.perf_counter() - t1
    if profiler:
        profiler.stop()
        with open(args.profile, "w") as fh:
            fh.write(profiler.output_text(unicode=False, color=False))
    print("BENCH-RESULT " + json.dumps({
        "ready": ready, "teardown": teardown, "services_kb": services, "host_peak_kb": peak,
        "restored": env.running.restored, "spare": bool(env.session.info.get("from_spare")),
        "stages": {k: round(v, 4) for k, v in env.timings.items()},
    }))


def _containers(ports: list[int]) -> list[str]:
    import subprocess

    ids: list[str] = []
    for port in ports:
        out = subprocess.run(["docker", "ps", "-q", "--filter", f"publish={port}"], capture_output=True, text=True)
        ids += out.stdout.split()
    return sorted(set(ids))


def _profiler():  # type: ignore[no-untyped-def]
    # pyinstrument lives in bench/.venv, not in envkit's: borrow it (same CPython minor version)
    bench_venv = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv", "lib")
    for entry in sorted(os.listdir(bench_venv)):
        sys.path.append(os.path.join(bench_venv, entry, "site-packages"))
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    return profiler


if __name__ == "__main__":
    main()
