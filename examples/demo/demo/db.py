"""Engine / session construction from the environment (``DATABASE_URL``)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

DRIVER = "postgresql+psycopg"


def normalize_url(url: str) -> str:
    """Make a plain Postgres URL use the psycopg 3 driver.

    ``postgres://`` and ``postgresql://`` (no driver) become
    ``postgresql+psycopg://``; URLs that already name a driver are untouched.
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return DRIVER + "://" + url[len(prefix) :]
    return url


def database_url(url: str | None = None) -> str:
    url = url or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError(
            "DATABASE_URL is not set; expected e.g. "
            "postgresql+psycopg://user:password@host:5432/dbname"
        )
    return normalize_url(url)


def engine_from_env(url: str | None = None, **kwargs: Any) -> Engine:
    """Create an Engine from ``url`` or the ``DATABASE_URL`` environment variable."""
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(database_url(url), **kwargs)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    """Return a ``sessionmaker`` bound to ``engine`` (default: ``engine_from_env()``)."""
    return sessionmaker(bind=engine or engine_from_env(), expire_on_commit=False)
