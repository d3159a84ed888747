"""conftest.py of the isolation project on envkit's pytest plugin (copied there by bench/run.py).

The tests (iso_plugin_tests.py) carry ``@pytest.mark.envkit(isolation=BENCH_ISOLATION)`` and use the
plugin's ``db_connection`` fixture; BENCH_ISOLATION = none is the baseline: the same body on one plain
SQLAlchemy connection, with no isolation at all (pytest's and the plugin's own per-test cost).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

MODE = os.environ.get("BENCH_ISOLATION", "rollback")


@pytest.fixture(scope="session")
def plain_connection() -> Iterator[Any]:
    from sqlalchemy import create_engine, text

    engine = create_engine(os.environ["DATABASE_URL"], isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        yield conn
        conn.execute(text("DELETE FROM categories"))  # the baseline kept its rows: leave the database as it was
    engine.dispose()


@pytest.fixture
def conn(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("plain_connection" if MODE == "none" else "db_connection")
