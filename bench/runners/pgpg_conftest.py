"""conftest.py of the generated pytest-postgresql + pytest-redis project (copied there by bench/run.py).

The ``*_proc`` fixtures as their users declare them. ``clock`` is requested
first, so it starts before both servers and its finalizer runs after both are
torn down. BENCH_APP names the app to migrate and seed into the template
database (pytest-postgresql's ``load``), as its users do.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
from pytest_postgresql import factories as pg_factories
from pytest_redis import factories as redis_factories

sys.path.insert(0, os.environ["BENCH_RUNNERS"])
import handwritten
import memory

APP = os.environ.get("BENCH_APP")
LOAD = [partial(handwritten.migrate_and_seed, app=APP)] if APP else []

postgresql_proc = pg_factories.postgresql_proc(port=None, load=LOAD)
postgresql = pg_factories.postgresql("postgresql_proc")
redis_proc = redis_factories.redis_proc(port=None)

T: dict[str, Any] = {}


@pytest.fixture(scope="session")
def clock() -> Iterator[dict[str, Any]]:
    T["t0"] = time.perf_counter()
    yield T
    end = time.perf_counter()
    if "ready_at" in T:
        doc = {"ready": T["ready_at"] - T["t0"], "teardown": end - T["body_end"],
               "services_kb": T.get("services_kb"), "host_peak_kb": T.get("host_peak_kb")}
        print("\nBENCH-RESULT " + json.dumps(doc), flush=True)


def mark_ready(pg_port: int, redis_port: int) -> None:
    T["ready_at"] = time.perf_counter()
    T["services_kb"] = memory.services_kb([pg_port, redis_port])
    T["host_peak_kb"] = memory.self_peak_kb()
    T["body_end"] = time.perf_counter()


@pytest.fixture
def isolated(postgresql: Any) -> Any:
    """For the per-test isolation figure: a fresh database per test, cloned from the template."""
    return postgresql
