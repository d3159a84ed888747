"""What a user of the anchors writes by hand to migrate and seed: the plain Alembic call and a bcrypt loop.

The anchors start bare servers; they neither migrate nor seed. This is the
code their users add (in a pytest-postgresql ``load`` callable, or after a
container starts), timed as part of the anchors' "migrated and seeded" figure.
bcrypt uses the same low cost as envkit (4) so that only the tools differ.
"""

from __future__ import annotations

import tomllib
import uuid
from pathlib import Path
from typing import Any

ROUNDS = 4


def migrate(url: str, alembic_ini: str | Path) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config(str(alembic_ini))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(cfg, "head")


def seed_users(conninfo: str, seed_file: str | Path) -> int:
    import bcrypt
    import psycopg

    users = tomllib.loads(Path(seed_file).read_text())["users"]
    rows = []
    for user in users:
        hashed = bcrypt.hashpw(user["password"].encode(), bcrypt.gensalt(ROUNDS)).decode()
        rows.append((uuid.uuid4(), user["username"], user["email"], hashed, user["role"], user.get("is_active", True)))
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO users (id, username, email, password_hash, role, is_active) VALUES (%s, %s, %s, %s, %s, %s)", rows)
    return len(rows)


def migrate_and_seed(host: str, port: int, user: str, dbname: str, password: str | None = None,
                     app: str | Path = "", **_: Any) -> None:
    """Alembic upgrade head, then the users; the signature of a pytest-postgresql loader."""
    auth = f"{user}:{password}" if password else user
    migrate(f"postgresql+psycopg://{auth}@{host}:{port}/{dbname}", Path(app) / "alembic.ini")
    seed_users(f"postgresql://{auth}@{host}:{port}/{dbname}", Path(app) / "seed.toml")
