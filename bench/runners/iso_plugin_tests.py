"""The small tests of the isolation figure on envkit's plugin (copied as test_iso.py)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from sqlalchemy import text

MODE = os.environ.get("BENCH_ISOLATION", "rollback")
N = int(os.environ.get("BENCH_TESTS", "0"))
BODY = float(os.environ.get("BENCH_BODY_MS", "0")) / 1000  # what the test itself does (a request through an app)
if MODE != "none":
    pytestmark = pytest.mark.envkit(isolation=MODE)


@pytest.mark.parametrize("i", range(N))
def test_isolated(conn: Any, i: int) -> None:
    time.sleep(BODY)
    conn.execute(text("INSERT INTO categories (name, slug) VALUES (:n, :s)"), {"n": f"c{i}", "s": f"c{i}"})
    assert conn.execute(text("SELECT count(*) FROM users")).scalar() > 0
    assert conn.execute(text("SELECT count(*) FROM categories")).scalar() == 1 or MODE == "none"
