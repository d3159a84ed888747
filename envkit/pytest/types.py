"""What the plugin's fixtures hand out: ``envkit_env``, ``envkit_db``, ``seeded_users``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from envkit.services import PostgresEndpoint, RedisEndpoint

__all__ = ["EnvkitDatabase", "EnvkitEnv", "SeededUsers"]


@dataclass(frozen=True)
class EnvkitEnv:
    """The ``envkit_env`` fixture: this test process's view of the environment."""

    name: str  # the environment's label (ENVKIT_NAME)
    backend: str
    worker: str  # "main", or the xdist worker id
    postgres: PostgresEndpoint | None  # host, port, user, password and this process's database
    template_database: str | None  # the environment's migrated and seeded database, this one's template
    redis: RedisEndpoint | None  # host, port, password and this process's database index
    redis_prefix: str  # "" unless xdist workers share one Redis index (the external backend)
    exports: Mapping[str, str] = field(repr=False)  # every exported variable, as this process's os.environ has it
    users_file: Path = Path()
    async_driver: str = "psycopg_async"  # postgres.async_driver, resolved: asyncpg or psycopg_async

    @property
    def database_url(self) -> str | None:
        """SQLAlchemy URL (psycopg 3) of this process's database."""
        return self.postgres.url() if self.postgres else None

    @property
    def async_database_url(self) -> str | None:
        """SQLAlchemy asyncio URL of this process's database, on ``postgres.async_driver``."""
        return self.postgres.url(self.async_driver) if self.postgres else None

    @property
    def redis_url(self) -> str | None:
        return self.redis.url if self.redis else None

    def redis_key(self, name: str) -> str:
        """``name`` inside this process's Redis namespace."""
        return self.redis_prefix + name


@dataclass
class EnvkitDatabase:
    """The ``envkit_db`` fixture: the database one test runs on, and how it is reset afterwards."""

    isolation: str  # rollback, truncate or clone
    postgres: PostgresEndpoint
    engine: Engine
    async_driver: str = "psycopg_async"

    @property
    def url(self) -> str:
        return self.postgres.url()

    @property
    def async_url(self) -> str:
        return self.postgres.url(self.async_driver)


class SeededUsers(list):  # type: ignore[type-arg]
    """The seeded users, as dicts with their plain ``password``; ``users["alice"]`` finds one by username or email."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for user in self:
                if key in (user.get("username"), user.get("email"), user.get("name")):
                    return user
            known = ", ".join(str(u.get("username") or u.get("email")) for u in self) or "none"
            raise KeyError(f"no seeded user {key!r} (seeded: {known})")
        return super().__getitem__(key)

    def with_role(self, role: str) -> list[dict[str, Any]]:
        return [user for user in self if user.get("role") == role]
