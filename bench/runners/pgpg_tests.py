"""Tests of the generated pytest-postgresql project (copied there as test_bench.py by bench/run.py)."""

from __future__ import annotations

import os
from typing import Any

import probe
import pytest
from conftest import mark_ready


def test_ready(clock: Any, postgresql_proc: Any, redis_proc: Any, request: pytest.FixtureRequest) -> None:
    dbname = "postgres"
    if os.environ.get("BENCH_APP"):
        conn = request.getfixturevalue("postgresql")  # a fresh database from the migrated, seeded template
        dbname = conn.info.dbname
    rows = probe.postgres(f"host={postgresql_proc.host} port={postgresql_proc.port} user={postgresql_proc.user} dbname={dbname}",
                          "SELECT count(*) FROM users" if os.environ.get("BENCH_APP") else "SELECT 1")
    probe.redis(redis_proc.host, redis_proc.port)
    mark_ready(postgresql_proc.port, redis_proc.port)
    assert rows
