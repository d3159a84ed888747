"""Fixtures for the demo's integration tests.

Only the environment is used: DATABASE_URL (an Alembic-migrated, seeded
Postgres database) and REDIS_URL. Without them the tests are skipped, unless
CI=true or ENVKIT_REQUIRE=1, in which case they fail.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session

APP_DIR = Path(__file__).resolve().parent.parent
if str(APP_DIR) not in sys.path:  # make "demo" importable however pytest is run
    sys.path.insert(0, str(APP_DIR))

from demo.db import engine_from_env  # noqa: E402
from demo.models import Category, Product  # noqa: E402

SEED_FILE = APP_DIR / "seed.toml"


def _required() -> bool:
    return (
        os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
        or os.environ.get("ENVKIT_REQUIRE", "").strip() == "1"
    )


def _env(name: str, example: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        msg = (
            f"{name} is not set (e.g. {example}); run these tests through "
            "`envkit test` (or `make demo` from the repository root)"
        )
        if _required():
            pytest.fail(msg + " -- failing because CI/ENVKIT_REQUIRE is set", pytrace=False)
        pytest.skip(msg)
    return value


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    url = _env("DATABASE_URL", "postgresql+psycopg://user:pw@localhost:5432/app")
    engine = engine_from_env(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    """A connection inside an outer transaction that is always rolled back."""
    with engine.connect() as conn:
        outer = conn.begin()
        try:
            yield conn
        finally:
            if outer.is_active:
                outer.rollback()


@pytest.fixture
def session(connection: Connection) -> Iterator[Session]:
    """ORM session whose commit()/rollback() only release/roll back SAVEPOINTs,
    so everything the application commits disappears after the test."""
    sess = Session(
        bind=connection,
        join_transaction_mode="create_savepoint",
        expire_on_commit=False,
    )
    try:
        yield sess
    finally:
        sess.close()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    url = _env("REDIS_URL", "redis://localhost:6379/0")
    client = redis.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def seed_users() -> list[dict[str, Any]]:
    with SEED_FILE.open("rb") as fh:
        return tomllib.load(fh)["users"]


@pytest.fixture
def products(session: Session) -> dict[str, Product]:
    """A small catalogue, created inside the test's outer transaction.

    commit() only releases the session's SAVEPOINT, so a later rollback() by
    application code does not undo the fixture data -- but the outer
    transaction still throws it away after the test.
    """
    tickets = Category(name="Tickets", slug="tickets")
    merch = Category(name="Merchandise", slug="merch")
    items = {
        "gig": Product(
            sku="TCK-GIG", name="Concert ticket", category=tickets, price_cents=4500, stock=10
        ),
        "vip": Product(
            sku="TCK-VIP", name="VIP upgrade", category=tickets, price_cents=12000, stock=1
        ),
        "tee": Product(
            sku="MER-TEE", name="Tour T-shirt", category=merch, price_cents=2500, stock=50
        ),
    }
    session.add_all(items.values())
    session.commit()
    return items
