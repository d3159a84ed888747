"""The database was migrated with `alembic upgrade head` and matches the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect

from demo.models import Base

APP_DIR = Path(__file__).resolve().parent.parent

EXPECTED_TABLES = {
    "users",
    "api_keys",
    "customers",
    "addresses",
    "categories",
    "products",
    "orders",
    "order_items",
    "payments",
    "audit_log",
}


def test_migrated_tables_exist(connection: Connection) -> None:
    insp = inspect(connection)
    tables = set(insp.get_table_names())
    assert EXPECTED_TABLES | {"alembic_version"} <= tables
    assert EXPECTED_TABLES == set(Base.metadata.tables)

    users = {c["name"]: c for c in insp.get_columns("users")}
    assert users["id"]["default"] is None, "users.id must not have a server default"
    assert "true" in str(users["is_active"]["default"]).lower()
    assert "now()" in str(users["created_at"]["default"]).lower()
    assert {u["column_names"][0] for u in insp.get_unique_constraints("users")} == {
        "username",
        "email",
    }
    assert "ix_orders_customer_id_created_at" in {i["name"] for i in insp.get_indexes("orders")}


def test_database_at_head_and_matches_models(connection: Connection) -> None:
    script = ScriptDirectory.from_config(Config(str(APP_DIR / "alembic.ini")))
    ctx = MigrationContext.configure(connection, opts={"compare_type": True})
    assert ctx.get_current_revision() == script.get_current_head()
    assert compare_metadata(ctx, Base.metadata) == []
