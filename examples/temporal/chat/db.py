"""The database, from DATABASE_URL (envkit sets it; a plain postgresql:// URL gets the psycopg 3 driver)."""

from __future__ import annotations

import os
from functools import lru_cache

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


@lru_cache
def engine(url: str | None = None) -> Engine:
    url = url or os.environ["DATABASE_URL"]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True)


def session() -> Session:
    return sessionmaker(engine(), expire_on_commit=False)()
