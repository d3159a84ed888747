"""conftest.py of the plain-SQL isolation project (``run.py --isolation-sql``), copied there by bench/run.py.

envkit's per-test isolation mechanisms written directly with psycopg, without
the pytest plugin around them: a reference for what each costs by itself.
BENCH_ISOLATION = none | rollback | truncate | clone.

- none: the baseline, no isolation at all (pytest's own per-test cost and the test body);
- rollback: one connection; each test runs in a transaction that is rolled back;
- truncate: each test commits; afterwards every table is truncated and the seeded rows put back;
- clone: each test gets a database cloned from a template of the migrated, seeded one.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

MODE = os.environ.get("BENCH_ISOLATION", "rollback")
URL = os.environ["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
DATABASE = os.environ["PGDATABASE"]
TEMPLATE = f"{DATABASE}_bench_tmpl"
_names = itertools.count()


@pytest.fixture(scope="session")
def session_conn() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(URL, autocommit=MODE != "rollback") as conn:
        yield conn
        if MODE == "none":  # the baseline kept its rows: leave the database as the next run expects it
            conn.execute("DELETE FROM categories")


@pytest.fixture(scope="session")
def seeded(session_conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The tables and the seeded rows, read once (truncate mode puts them back after each test)."""
    tables = [r[0] for r in session_conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'")]
    cur = session_conn.execute("SELECT * FROM users")
    columns = [c.name for c in cur.description or []]
    return {"tables": tables, "columns": columns, "rows": cur.fetchall()}


@pytest.fixture(scope="session")
def admin() -> Iterator[psycopg.Connection[Any]]:
    """One maintenance connection for the run, creating the template and each test's clone."""
    with psycopg.connect(URL, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(TEMPLATE), sql.Identifier(DATABASE)))
        yield conn
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))


@pytest.fixture
def isolated(request: pytest.FixtureRequest) -> Iterator[psycopg.Connection[Any]]:
    if MODE == "none":
        yield request.getfixturevalue("session_conn")
    elif MODE == "rollback":
        conn = request.getfixturevalue("session_conn")
        yield conn
        conn.rollback()
    elif MODE == "truncate":
        conn = request.getfixturevalue("session_conn")
        seed = request.getfixturevalue("seeded")
        yield conn
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(
            sql.SQL(", ").join(map(sql.Identifier, seed["tables"]))))
        with conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO users ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, seed["columns"])),
                sql.SQL(", ").join(sql.Placeholder() * len(seed["columns"]))), seed["rows"])
    else:
        admin = request.getfixturevalue("admin")
        name = f"{DATABASE}_t{next(_names)}"
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
        with psycopg.connect(URL, dbname=name, autocommit=True) as conn:
            yield conn
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
