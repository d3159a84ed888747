"""The container anchors, timed in-process: testcontainers-python, or `docker compose up --wait`.

Run with bench/.venv:
    python docker_anchors.py testcontainers|compose [--app DIR] [--pg-port N --redis-port N]
With ``--app``, the hand-written Alembic call and bcrypt seeding follow (see handwritten.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"  # the Ryuk image is not available on these machines
os.environ["TC_HOST"] = "127.0.0.1"  # connect over IPv4 loopback ("localhost" may resolve to ::1)
os.environ["TESTCONTAINERS_CONNECTION_MODE"] = "docker_host"  # it thinks it runs in a container: use the host's ports
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import handwritten
import memory
import probe
import psycopg  # noqa: F401 - imported before the clock, as for every contender

COMPOSE_FILE = Path(__file__).with_name("anchor-compose.yml")


def testcontainers(app: str | None, ids_file: str | None) -> dict[str, object]:
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.community.redis import RedisContainer

    t0 = time.perf_counter()
    pg = PostgresContainer("postgres:16-alpine", driver="psycopg")
    rd = RedisContainer("redis:7-alpine")
    pg.ports["5432"] = ("127.0.0.1", None)  # type: ignore[assignment] - published on loopback only
    rd.ports["6379"] = ("127.0.0.1", None)  # type: ignore[assignment]
    try:
        pg.start()
        _record(ids_file, pg)
        rd.start()
        _record(ids_file, rd)
        url = pg.get_connection_url()
        if app:
            handwritten.migrate(url, Path(app) / "alembic.ini")
            handwritten.seed_users(probe.libpq(url), Path(app) / "seed.toml")
        probe.postgres(url, "SELECT count(*) FROM users" if app else "SELECT 1")
        probe.redis("127.0.0.1", int(rd.get_exposed_port(6379)))
        ready = time.perf_counter() - t0
        services = memory.containers_kb([pg.get_container_id(), rd.get_container_id()])
        peak = memory.self_peak_kb()
    finally:
        t1 = time.perf_counter()
        for container in (rd, pg):
            if container._container is not None:
                container.stop()
        teardown = time.perf_counter() - t1
    return {"ready": ready, "teardown": teardown, "services_kb": services, "host_peak_kb": peak}


def _record(ids_file: str | None, container: object) -> None:
    """Note a container's id at once, so the harness can remove it if this process dies."""
    if ids_file:
        with open(ids_file, "a") as fh:
            fh.write(container.get_container_id() + "\n")  # type: ignore[attr-defined]


def compose(app: str | None, pg_port: int, redis_port: int) -> dict[str, object]:
    project = f"envkit-bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PG_PORT": str(pg_port), "REDIS_PORT": str(redis_port)}
    base = ["docker", "compose", "-p", project, "-f", str(COMPOSE_FILE)]
    t0 = time.perf_counter()
    try:
        subprocess.run([*base, "up", "-d", "--wait"], env=env, check=True, capture_output=True, text=True)
        url = f"postgresql+psycopg://app:app-password@127.0.0.1:{pg_port}/app_test"
        if app:
            handwritten.migrate(url, Path(app) / "alembic.ini")
            handwritten.seed_users(probe.libpq(url), Path(app) / "seed.toml")
        probe.postgres(url, "SELECT count(*) FROM users" if app else "SELECT 1")
        probe.redis("127.0.0.1", redis_port)
        ready = time.perf_counter() - t0
        ids = subprocess.run([*base, "ps", "-q"], env=env, capture_output=True, text=True).stdout.split()
        services = memory.containers_kb(ids)
        peak = memory.self_peak_kb()
    finally:
        t1 = time.perf_counter()
        subprocess.run([*base, "down", "-v"], env=env, capture_output=True, check=False)
        teardown = time.perf_counter() - t1
    return {"ready": ready, "teardown": teardown, "services_kb": services, "host_peak_kb": peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tool", choices=["testcontainers", "compose"])
    parser.add_argument("--app")
    parser.add_argument("--pg-port", type=int, default=0)
    parser.add_argument("--redis-port", type=int, default=0)
    parser.add_argument("--ids-file")
    args = parser.parse_args()
    if args.tool == "testcontainers":
        result = testcontainers(args.app, args.ids_file)
    else:
        result = compose(args.app, args.pg_port, args.redis_port)
    print("BENCH-RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
