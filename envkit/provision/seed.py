"""Seeding: users with bcrypt-hashed passwords, SQL files, and a Python hook.

Users come from ``seed.file`` (TOML or YAML, a ``users`` list) and inline
``seed.users``. Each key is a column (``seed.columns`` renames), ``password``
is hashed into ``seed.password_column``, and ``seed.generate`` fills columns
that have no server default. Identifiers are quoted and values bound. The plain
passwords go only to the users file (mode 0600) for the tests, never to logs.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
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
    from ..services import PostgresEndpoint

log = logging.getLogger("envkit")

BCRYPT_MAX_BYTES = 72
_GENERATORS = {"uuid4": lambda: uuid.uuid4(), "now": lambda: dt.datetime.now(dt.UTC)}


def load_users(config: Config) -> list[dict[str, Any]]:
    """The users to seed, validated (no hashing yet)."""
    return [user for _, user in _users_with_origin(config)]


def _users_with_origin(config: Config) -> list[tuple[str, dict[str, Any]]]:
    """Each user with where it was written (``users #2 in seed.toml``), for messages."""
    found: list[tuple[str, Any]] = []
    if config.seed.file:
        path = config.path(config.seed.file)
        found += [(f"users #{i + 1} in {path}", u) for i, u in enumerate(_read_seed_file(path))]
    found += [(f"seed.users #{i + 1} in {config.source}", u) for i, u in enumerate(config.seed.users)]
    for where, user in found:
        if not isinstance(user, dict):
            raise SeedError(f"{where} must be a table of column = value ([[users]] with username = ..., "
                            f"password = ...), found {type(user).__name__} {user!r}")
        password = user.get("password")
        who = _who(where, user)
        if password is not None:
            if not isinstance(password, str):
                raise SeedError(f"seed user {who}: password must be a string, found {type(password).__name__}")
            if len(password.encode()) > BCRYPT_MAX_BYTES:
                raise SeedError(
                    f"seed user {who}: password is {len(password.encode())} bytes; bcrypt accepts at most "
                    f"{BCRYPT_MAX_BYTES} bytes (UTF-8). Use a shorter password for this user"
                )
    return [(where, dict(user)) for where, user in found]


def _who(where: str, user: Mapping[str, Any]) -> str:
    name = user.get("username") or user.get("email")
    return f"{name!r} ({where})" if name else where


def _read_seed_file(path: Path) -> list[Any]:
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
    if not isinstance(doc, dict):
        raise SeedError(f"{path}: a seed file is a table with a 'users' list ([[users]] in TOML, users: in YAML), "
                        f"found {type(doc).__name__}")
    unknown = [k for k in doc if k != "users"]
    if unknown:
        close = difflib.get_close_matches(unknown[0], ["users"], n=1, cutoff=0.6)
        hint = "; did you mean 'users' ([[users]] in TOML)?" if close else ""
        raise SeedError(f"{path}: unknown key {unknown[0]!r}{hint} A seed file holds only a 'users' list")
    users = doc.get("users", [])
    if not isinstance(users, list):
        raise SeedError(f"{path}: 'users' must be a list of tables ([[users]] in TOML), found {type(users).__name__}")
    return users


def hash_password(password: str, rounds: int) -> str:
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()


def rows_for(users: list[dict[str, Any]], seed: SeedConfig) -> list[dict[str, Any]]:
    """Column -> value rows: renamed keys, hashed passwords, generated columns."""
    passwords = [u.get("password") for u in users]
    todo = [p for p in passwords if p is not None]
    pool = ThreadPoolExecutor(max_workers=4)  # bcrypt releases the GIL
    try:
        hashes = iter(list(pool.map(lambda p: hash_password(p, seed.bcrypt_rounds), todo)))
    finally:
        pool.shutdown(cancel_futures=True)  # on a Ctrl-C, the hashes still queued are not computed first
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
    origins = _users_with_origin(config)
    users = [user for _, user in origins]
    if users or config.seed.sql or config.seed.hook:
        guard_with(config, pg, pg.database, "seed")
    done = []
    if users:
        import psycopg

        rows = rows_for(users, config.seed)
        try:
            with connect(pg.libpq()) as conn, conn.transaction():
                for query, params in insert_statements(config.seed.table, rows):
                    with conn.cursor() as cur:
                        cur.executemany(query, params)
        except psycopg.Error as exc:  # the database's own message is the useful part
            where = _failing_row(pg, config.seed.table, rows, origins)
            raise SeedError(
                f"seeding table {config.seed.table!r} failed{where}: {_db_message(exc)}. "
                "Check the row, and seed.table, seed.columns and seed.generate against the migrated schema"
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


def _db_message(exc: BaseException) -> str:
    """The server's message and its DETAIL line (which names the key of a duplicate), never the failing row."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    detail = next((line for line in lines[1:] if line.startswith("DETAIL:") and "Failing row" not in line), "")
    return lines[0] + (f" ({detail})" if detail else "")


def _failing_row(pg: PostgresEndpoint, table: str, rows: list[dict[str, Any]],
                 origins: list[tuple[str, dict[str, Any]]]) -> str:
    """Which seed row fails, found by inserting them one at a time (each in a savepoint), then rolling back."""
    import psycopg

    found = ""
    try:
        with connect(pg.libpq()) as conn, conn.transaction():
            for (where, user), row in zip(origins, rows, strict=True):
                try:
                    with conn.transaction(), conn.cursor() as cur:
                        for query, params in insert_statements(table, [row]):
                            cur.executemany(query, params)
                except psycopg.Error:
                    found = f" at seed user {_who(where, user)}"
                    break
            raise psycopg.Rollback()
    except Exception as exc:  # noqa: BLE001 - the search is a courtesy: the original error still stands
        log.debug("could not find the failing seed row: %s", exc)
    return found


def _run_hook(config: Config, pg: PostgresEndpoint, env: Mapping[str, str]) -> None:
    from . import hook

    hook.run(config, pg, env)
