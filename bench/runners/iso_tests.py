"""The small tests of the isolation figure (copied as test_iso.py): the same body under every mechanism."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

N = int(os.environ.get("BENCH_TESTS", "0"))
BODY = float(os.environ.get("BENCH_BODY_MS", "0")) / 1000  # what the test itself does (a request through an app)
ISOLATED = os.environ.get("BENCH_ISOLATION") != "none"  # the no-isolation baseline keeps every row


@pytest.mark.parametrize("i", range(N))
def test_isolated(isolated: Any, i: int) -> None:
    time.sleep(BODY)
    isolated.execute("INSERT INTO categories (name, slug) VALUES (%s, %s)", (f"c{i}", f"c{i}"))
    assert isolated.execute("SELECT count(*) FROM users").fetchone()[0] > 0
    assert isolated.execute("SELECT count(*) FROM categories").fetchone()[0] == 1 or not ISOLATED
