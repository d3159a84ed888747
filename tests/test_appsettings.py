"""The settings names init reads from a project's source, and the [env] it offers for them (pure logic)."""

from __future__ import annotations

from pathlib import Path

from envkit import appsettings
from envkit.schema import Column, UsersSchema
from envkit.seedplan import plan_from_schema

SOURCE = '''
import os
from typing import Literal
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_")
    _private: str = "x"

    DB_HOST: str
    db_port: int = 5432
    DB_NAME: str = Field(default="app")
    ASYNC_DATABASE_URL: str
    redis_host: str = "localhost"
    ADMIN_EMAIL: str
    ADMIN_PASSWORD: str = Field(...)
    MODE: Literal["dev", "ci"]
    DEBUG: bool
    WORKERS: int
    TOKEN_SECRET: str = Field(validation_alias="JWT_SECRET")
    OPTIONAL: str | None = None


SENTRY = os.environ["SENTRY_DSN"]
LEVEL = os.getenv("LOG_LEVEL", "info")
HOME = os.environ.get("DATABASE_URL")
'''


def offers_for(tmp_path: Path, source: str, *, asyncpg: bool = True, admin: str | None = "users[0]") -> dict[str, str]:
    path = tmp_path / "app" / "config.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    settings = appsettings.read(tmp_path, [path])
    return {o.name: o.template for o in appsettings.offers(settings, asyncpg=asyncpg, admin=admin)}


def test_settings_classes_and_environ_reads_become_env(tmp_path: Path) -> None:
    assert offers_for(tmp_path, SOURCE) == {
        "APP_DB_HOST": "{{ postgres.host }}", "APP_DB_PORT": "{{ postgres.port }}", "APP_DB_NAME": "{{ postgres.database }}",
        "APP_ASYNC_DATABASE_URL": "{{ postgres.async_url }}", "APP_REDIS_HOST": "{{ redis.host }}",
        "APP_ADMIN_EMAIL": "{{ users[0].email }}", "APP_ADMIN_PASSWORD": "{{ users[0].password }}",
        "APP_MODE": "dev", "APP_DEBUG": "false", "APP_WORKERS": "1", "JWT_SECRET": "test-jwt-secret",
        "SENTRY_DSN": "test-sentry-dsn"}  # LOG_LEVEL has a default; DATABASE_URL is envkit's own export
    plain = offers_for(tmp_path, SOURCE, asyncpg=False, admin=None)
    assert plain["APP_ASYNC_DATABASE_URL"] == "{{ postgres.url }}"
    assert plain["APP_ADMIN_EMAIL"] == "test@example.com" and "APP_ADMIN_PASSWORD" in plain  # required, no users
    assert offers_for(tmp_path, "class Broken(:\n") == {}  # a file that does not parse is passed over


def test_a_seed_that_fills_every_not_null_column_without_a_default() -> None:
    def col(name: str, type_: str, base: str, nullable: bool = False, default: str | None = None, **kw: object) -> Column:
        return Column(name, type_, base, nullable, default, **kw)  # type: ignore[arg-type]

    table = UsersSchema("public", "account", {c.name: c for c in [
        col("id", "integer", "int"), col("email", "text", "text", unique=True), col("hashed_password", "text", "text"),
        col("kind", "user_kind", "enum", allowed=("owner", "member")), col("tenant", "text", "text"),
        col("handle", "text", "text", unique=True), col("external_id", "uuid", "uuid"),
        col("joined", "timestamp with time zone", "timestamp"), col("born", "date", "date"),
        col("prefs", "jsonb", "json"), col("is_superuser", "boolean", "bool", default="false"),
        col("nickname", "text", "text", nullable=True), col("created", "timestamp", "timestamp", default="now()"),
        col("shape", "point", "other")]}, ("id",))
    found: list[str] = []
    plan = plan_from_schema(table, found.append)
    assert plan.table == "account" and plan.password_column == "hashed_password"
    assert plan.generate == {"external_id": "uuid4", "joined": "now"}
    admin, alice = plan.users
    assert admin["id"] == 1 and alice["id"] == 2  # an integer key with no default: given
    assert admin["kind"] == "owner" and alice["kind"] == "member"  # the role column, from the enum's labels
    assert admin["is_superuser"] is True and alice["is_superuser"] is False
    assert admin["handle"] == "admin-handle" and alice["handle"] == "alice-handle" and admin["tenant"] == "admin"
    assert admin["password"] == "admin-password" and "hashed_password" not in admin and admin["nickname"] == "admin"
    assert str(admin["born"]) == "2000-01-01" and admin["prefs"] == {} and "created" not in admin
    assert any("column shape: NOT NULL without a default, of type point, which init cannot fill" in n for n in found)
