"""Template values of [env]: the asyncio URLs and the seeded users (pure logic, no servers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from envkit.config import load
from envkit.errors import ConfigError
from envkit.exports import Users, async_driver, context, render
from envkit.services import PostgresEndpoint, Running
from envkit.state import Session

PG = PostgresEndpoint(host="127.0.0.1", port=5433, user="envkit", password="p w", database="shop_test", admin_url="")


def config_with(tmp_path: Path, body: str):  # type: ignore[no-untyped-def]
    (tmp_path / "envkit.toml").write_text('project = "shop"\n' + body)
    return load(tmp_path, environ={})


def ctx(tmp_path: Path, body: str) -> dict:  # type: ignore[type-arg]
    config = config_with(tmp_path, body)
    session = Session(path=tmp_path / ".envkit", name="shop-1", backend="native")
    return context(config, Running(backend="native", postgres=PG), session)


USERS = """
[seed]
users = [
  { username = "admin", email = "root@example.com", password = "admin-pw", role = "admin" },
  { email = "ann@example.com", full_name = "Ann", password = "ann-pw", role = "staff" },
]
"""


def test_users_by_index_name_email_local_part_and_role(tmp_path: Path) -> None:
    values = ctx(tmp_path, USERS + '[env]\nX = "{{ users }}"\n')
    templates = {"A": "{{ users[0].email }}", "B": "{{ users.admin.password }}", "C": "{{ users.ann.password }}",
                 "D": "{{ users['ann@example.com'].full_name }}", "E": "{{ users.staff.email }}", "F": "{{ users.Ann.email }}",
                 "G": "{{ users | length }}"}
    assert render(templates, values, "envkit.toml") == {
        "A": "root@example.com", "B": "admin-pw", "C": "ann-pw", "D": "Ann", "E": "ann@example.com", "F": "ann@example.com",
        "G": "2"}
    with pytest.raises(ConfigError, match=r"env.H = .*cannot be rendered.*Available: .*users"):
        render({"H": "{{ users.nobody.email }}"}, values, "envkit.toml")
    with pytest.raises(KeyError, match=r"no seeded user .nobody. \(by username, email, name or role; seeded: admin, ann@example.com\)"):
        Users(values["users"])["nobody"]


def test_users_are_read_only_when_a_template_names_them(tmp_path: Path) -> None:
    broken = '[seed]\nfile = "missing.toml"\n'
    assert "users" not in ctx(tmp_path, broken + '[env]\nX = "{{ postgres.port }}"\n')  # a broken seed is seed's business
    assert ctx(tmp_path, USERS + '[env]\nX = "{{ users[1].email }}"\n')["users"][1]["email"] == "ann@example.com"


def test_asyncio_urls_and_the_configured_driver(tmp_path: Path) -> None:
    pg = ctx(tmp_path, '[postgres]\nasync_driver = "psycopg"\n')["postgres"]
    assert pg["asyncpg_url"] == "postgresql+asyncpg://envkit:p%20w@127.0.0.1:5433/shop_test"
    assert pg["psycopg_async_url"] == pg["async_url"] == "postgresql+psycopg_async://envkit:p%20w@127.0.0.1:5433/shop_test"
    assert ctx(tmp_path, '[postgres]\nasync_driver = "asyncpg"\n')["postgres"]["async_url"] == pg["asyncpg_url"]
    installed = importlib.util.find_spec("asyncpg") is not None
    assert async_driver(config_with(tmp_path, "")) == ("asyncpg" if installed else "psycopg_async")
    with pytest.raises(ConfigError, match=r"postgres\.async_driver must be one of auto, asyncpg, psycopg, found 'asyncpq'.*'asyncpg'"):
        config_with(tmp_path, '[postgres]\nasync_driver = "asyncpq"\n')


def test_a_password_exported_under_a_name_that_cannot_be_masked_is_warned_about(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from envkit.exports import build, secrets_of

    config = config_with(tmp_path, USERS + '[env]\nFIRST_SUPERUSER_PASSWORD = "{{ users.admin.password }}"\n'
                                           'ADMIN_PW = "{{ users.admin.password }}"\n')
    session = Session(path=tmp_path / ".envkit", name="shop-1", backend="native")
    with caplog.at_level("WARNING", logger="envkit"):
        env = build(config, Running(backend="native", postgres=PG), session)
    assert env["FIRST_SUPERUSER_PASSWORD"] == env["ADMIN_PW"] == "admin-pw"
    assert [r.getMessage().split(" renders")[0] for r in caplog.records] == ["env.ADMIN_PW"]
    assert "admin-pw" not in caplog.text
    assert "admin-pw" in secrets_of({"FIRST_SUPERUSER_PASSWORD": "admin-pw"})  # masked by its name
