"""Seeding logic without a database: validation, hashing, column mapping, quoting."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest

from envkit import SeedError, load_config
from envkit.config import SeedConfig
from envkit.provision.seed import insert_statements, load_users, rows_for


def test_password_over_72_bytes_names_user_but_not_password(tmp_path: Path) -> None:
    secret = "é" * 36 + "x"  # 73 bytes in UTF-8
    (tmp_path / "envkit.toml").write_text(f'[[seed.users]]\nusername = "mallory"\npassword = "{secret}"\n')
    with pytest.raises(SeedError) as info:
        load_users(load_config(tmp_path, environ={}))
    assert "mallory" in str(info.value) and "73 bytes" in str(info.value)
    assert secret not in str(info.value)


def test_exactly_72_bytes_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "envkit.toml").write_text(f'[[seed.users]]\nusername = "ok"\npassword = "{"a" * 72}"\n')
    assert load_users(load_config(tmp_path, environ={}))[0]["username"] == "ok"


def test_users_from_yaml_file_and_inline(tmp_path: Path) -> None:
    (tmp_path / "seed.yaml").write_text("users:\n  - username: a\n    password: pa\n")
    (tmp_path / "envkit.toml").write_text('[seed]\nfile = "seed.yaml"\n[[seed.users]]\nusername = "b"\npassword = "pb"\n')
    assert [u["username"] for u in load_users(load_config(tmp_path, environ={}))] == ["a", "b"]


def test_missing_seed_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "envkit.toml").write_text('[seed]\nfile = "nope.toml"\n')
    with pytest.raises(SeedError, match=r"nope\.toml, which does not exist"):
        load_users(load_config(tmp_path, environ={}))


def test_rows_hash_rename_and_generate() -> None:
    seed = SeedConfig(password_column="pw", columns={"username": "login"}, generate={"id": "uuid4", "created": "now"})
    rows = rows_for([{"username": "o'hare", "password": "secret", "role": "admin"}], seed)
    row = rows[0]
    assert row["login"] == "o'hare" and "username" not in row and "password" not in row
    assert row["pw"].startswith("$2b$04$") and bcrypt.checkpw(b"secret", row["pw"].encode())
    assert len(str(row["id"])) == 36 and row["created"].tzinfo is not None


def test_insert_quotes_identifiers_and_binds_values() -> None:

    statements = insert_statements("user", [{"select": 'x"; DROP TABLE users;--', "order": 1}])
    (query, params), = statements
    text = query.as_string(None)
    assert text == 'INSERT INTO "user" ("select", "order") VALUES (%s, %s)'
    assert params == [['x"; DROP TABLE users;--', 1]]


def test_schema_qualified_table() -> None:

    (query, _), = insert_statements("tenant.users", [{"a": 1}])
    assert query.as_string(None).startswith('INSERT INTO "tenant"."users"')  # type: ignore[arg-type]


@pytest.mark.parametrize(("seed", "match"), [
    ('[[user]]\nusername = "alice"\n', r"unknown key 'user'; did you mean 'users'"),
    ('users = ["alice"]\n', r"users #1 in .*seed\.toml must be a table of column = value.*found str 'alice'"),
    ('users = { username = "alice" }\n', r"'users' must be a list of tables"),
    ('[[users]]\nusername = "a"\npassword = 5\n', r"seed user 'a' \(users #1 in .*seed\.toml\): password must be a string"),
])
def test_malformed_seed_files_are_errors_naming_file_and_row(tmp_path: Path, seed: str, match: str) -> None:
    (tmp_path / "seed.toml").write_text(seed)
    (tmp_path / "envkit.toml").write_text('[seed]\nfile = "seed.toml"\n')
    with pytest.raises(SeedError, match=match):
        load_users(load_config(tmp_path, environ={}))


def test_yaml_seed_file_that_is_a_list_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "seed.yaml").write_text("- username: a\n")
    (tmp_path / "envkit.toml").write_text('[seed]\nfile = "seed.yaml"\n')
    with pytest.raises(SeedError, match=r"seed\.yaml: a seed file is a table with a 'users' list"):
        load_users(load_config(tmp_path, environ={}))
