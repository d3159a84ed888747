"""Seeding: users with bcrypt-hashed passwords, SQL files, and a Python hook.

Users come from ``seed.file`` (TOML or YAML, a ``users`` list) and inline
``seed.users``. Each key is a column (``seed.columns`` renames), ``password``
is hashed into ``seed.password_column``, and ``seed.generate`` fills columns
that have no server default. Identifiers are quoted and values bound. The plain
passwords go only to the users file (mode 0600) for the tests, never to logs.
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Config, SeedConfig
from ..errors import SeedError
from ..state import write_private
from .database import connect, guard_with

if TYPE_CHECKING:
    from ..backends.base import PostgresEndpoint

BCRYPT_MAX_BYTES = 72
_GENERATORS = {"uuid4": lambda: uuid.uuid4(), "now": lambda: dt.datetime.now(dt.UTC)}


def load_users(config: Config) -> list[dict[str, Any]]:
    """The users to seed, validated (no hashing yet)."""
    users: list[dict[str, Any]] = []
    if config.seed.file:
        users += _read_seed_file(config.path(config.seed.file))
    users += [dict(u) for u in config.seed.users]
    for index, user in enumerate(users):
        who = user.get("username") or user.get("email") or f"#{index + 1}"
        if not isinstance(user, dict):
            raise SeedError(f"seed user #{index + 1} must be a table of column = value, found {type(user).__name__}")
        password = user.get("password")
        if password is not None:
            if not isinstance(password, str):
                raise SeedError(f"seed user {who!r}: password must be a string")
            if len(password.encode()) > BCRYPT_MAX_BYTES:
                raise SeedError(
                    f"seed user {who!r}: password is {len(password.encode())} bytes; bcrypt accepts at most "
                    f"{BCRYPT_MAX_BYTES} bytes (UTF-8). Use a shorter password for this user"
                )
    return users


def _read_seed_file(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SeedError(f"seed.file is {path}, which does not exist; create it or fix the path")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            doc = yaml.safe_load(path.read_text()) or {}
        else:
            doc = tomllib.loads(path.read_text())
    except Exception as exc:  # noqa: BLE001 - a parse error of either format
        raise SeedError(f"{path}: cannot parse ({exc})") from None
    users = doc.get("users", []) if isinstance(doc, dict) else None
    if not isinstance(users, list):
        raise SeedError(f"{path}: 'users' must be a list of tables ([[users]] in TOML)")
    return users


def hash_password(password: str, rounds: int) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def rows_for(users: list[dict[str, Any]], seed: SeedConfig) -> list[dict[str, Any]]:
    """Column -> value rows: renamed keys, hashed passwords, generated columns."""
    passwords = [u.get("password") for u in users]
    todo = [p for p in passwords if p is not None]
    with ThreadPoolExecutor(max_workers=4) as pool:  # bcrypt releases the GIL
        hashes = iter(list(pool.map(lambda p: hash_password(p, seed.bcrypt_rounds), todo)))
    rows = []
    for user, password in zip(users, passwords, strict=True):
        row = {seed.columns.get(k, k): v for k, v in user.items() if k != "password"}
        if password is not None:
            row[seed.password_column] = next(hashes)
        for column, kind in seed.generate.items():
            if column not in row:
                row[column] = _GENERATORS[kind]()
        rows.append(row)
    return rows


def insert_statements(table: str, rows: list[dict[str, Any]]) -> list[tuple[Any, list[list[Any]]]]:
    """One ``(INSERT query, [params...])`` per distinct column set; identifiers quoted, values bound."""
    from psycopg import sql

    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row), []).append([_adapt(v) for v in row.values()])
    target = sql.Identifier(*table.split("."))
    out = []
    for columns, params in groups.items():
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            target, sql.SQL(", ").join(map(sql.Identifier, columns)), sql.SQL(", ").join(sql.Placeholder() * len(columns)))
        out.append((query, params))
    return out


def _adapt(value: Any) -> Any:
    if isinstance(value, dict):
        from psycopg.types.json import Jsonb

        return Jsonb(value)
    return value


def seed(config: Config, pg: PostgresEndpoint, users_file: Path, env: Mapping[str, str]) -> str:
    """Insert the users, run the SQL seed files and the hook; write the users file."""
    users = load_users(config)
    if users or config.seed.sql or config.seed.hook:
        guard_with(config, pg, pg.database, "seed")
    done = []
    if users:
        rows = rows_for(users, config.seed)
        with connect(pg.libpq()) as conn, conn.transaction():
            for query, params in insert_statements(config.seed.table, rows):
                try:
                    with conn.cursor() as cur:
                        cur.executemany(query, params)
                except Exception as exc:  # noqa: BLE001 - the database's own message is the useful part
                    raise SeedError(
                        f"seeding table {config.seed.table!r} failed: {str(exc).strip().splitlines()[0]}. "
                        "Check seed.table, seed.columns and seed.generate against the migrated schema"
                    ) from None
        public = [{**user, **{k: v for k, v in row.items() if k not in user and k != config.seed.password_column}}
                  for user, row in zip(users, rows, strict=True)]
        write_private(users_file, json.dumps(public, default=str, indent=2))
        done.append(f"{len(users)} users")
    for name in config.seed.sql:
        path = config.path(name)
        try:
            with connect(pg.libpq()) as conn, conn.transaction():
                conn.execute(path.read_bytes())
        except OSError as exc:
            raise SeedError(f"seed.sql names {path}: {exc.strerror}") from None
        except Exception as exc:  # noqa: BLE001
            raise SeedError(f"seed file {path} failed: {str(exc).strip().splitlines()[0]}") from None
        done.append(path.name)
    if config.seed.hook:
        _run_hook(config, pg, env)
        done.append(config.seed.hook)
    return ", ".join(done) or "nothing to seed"


def _run_hook(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> None:
    from . import hook

    hook.run(config, pg, env)
