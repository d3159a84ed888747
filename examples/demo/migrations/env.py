"""Alembic environment for the envkit demo app.

Database URL, in order of precedence:

1. a Connection passed in ``config.attributes["connection"]`` (programmatic use),
2. the ``sqlalchemy.url`` main option (``Config.set_main_option`` or alembic.ini),
3. the ``DATABASE_URL`` environment variable.

Plain ``postgres://`` / ``postgresql://`` URLs are switched to the psycopg 3
driver (``postgresql+psycopg://``).
"""

from __future__ import annotations

import os
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import Connection, create_engine, pool

# alembic.ini's prepend_sys_path normally does this; keep env.py working
# even when Alembic is driven with a different config file / cwd.
_APP_DIR = str(Path(__file__).resolve().parent.parent)
if _APP_DIR not in sys.path:
    sys.path.insert(0, _APP_DIR)

from demo.db import normalize_url  # noqa: E402
from demo.models import Base  # noqa: E402

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def get_url() -> str:
    url = (config.get_main_option("sqlalchemy.url") or "").strip()
    if not url:
        url = os.environ.get("DATABASE_URL", "").strip()
    if not url:
        raise RuntimeError(
            "No database URL for Alembic: set the DATABASE_URL environment "
            "variable (e.g. postgresql+psycopg://user:pw@host:5432/db) or the "
            "'sqlalchemy.url' option of the Alembic config."
        )
    return normalize_url(url)


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=get_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run_with_connection(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_with_connection(connection)
        return
    engine = create_engine(get_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_with_connection(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
