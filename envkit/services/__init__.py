"""What runs: the services, one module each, whatever backend runs them.

    postgres   built in (envkit.services.postgres): endpoint, ports, exports
    redis      built in (envkit.services.redis)
    [services.NAME]  user-defined, or one of the shipped recipes (envkit.services.user)

A backend (``envkit.backends``) decides *how* they run and never branches on a
service's name: a container backend runs :func:`containers`, one
:class:`~envkit.services.container.Container` record each; for a user service
it reads the :class:`ServiceSpec`. Every backend hands
back endpoints, typed records that the state file keeps as they are
(:func:`record` / :func:`from_record`), so no layer re-parses an exported string.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from . import postgres, redis, user
from .container import Container
from .postgres import PostgresEndpoint
from .redis import RedisEndpoint
from .user import Probe, ServiceEndpoint, ServiceSpec, recipes, specs, unsupported, waves

__all__ = [
    "BUILTIN",
    "Container",
    "Endpoint",
    "PostgresEndpoint",
    "Probe",
    "RedisEndpoint",
    "Running",
    "ServiceEndpoint",
    "ServiceSpec",
    "containers",
    "from_record",
    "password",
    "recipes",
    "record",
    "specs",
    "unsupported",
    "waves",
]

Endpoint = PostgresEndpoint | RedisEndpoint | ServiceEndpoint

#: The built-in services, by name: their module and endpoint type.
BUILTIN: dict[str, type[PostgresEndpoint] | type[RedisEndpoint]] = {"postgres": PostgresEndpoint, "redis": RedisEndpoint}


def containers(config: Config, password: str) -> list[Container[Any]]:
    """What a container backend runs for ``config``: the enabled built-ins, then the user services, each after
    what it depends on. ``password`` is the environment's (:func:`password`)."""
    builtin = [found for module in (postgres, redis) if (found := module.container(config, password)) is not None]
    return [*builtin, *(user.container(spec, config, password) for spec in specs(config))]


def password(config: Config, fallback: str | None = None) -> str:
    """The environment's password, which services that take one use: the configured ``postgres.password``,
    else ``fallback``, else a fresh random one."""
    return postgres.password(config.postgres.password or fallback)


def record(endpoints: dict[str, Endpoint]) -> dict[str, dict[str, Any]]:
    """The endpoints as the state file keeps them."""
    return {name: ep.record() for name, ep in endpoints.items()}


def from_record(records: dict[str, dict[str, Any]], admin_url: str | None = None) -> dict[str, Endpoint]:
    """The endpoints a state file recorded; ``admin_url`` is the backend's superuser URL for postgres, if it has one."""
    out: dict[str, Endpoint] = {}
    for name, data in records.items():
        kind = data.get("kind")
        if kind == "postgres":
            out[name] = PostgresEndpoint.from_record(data, admin_url)
        elif kind == "redis":
            out[name] = RedisEndpoint.from_record(data)
        elif kind == "service":
            out[name] = ServiceEndpoint.from_record(data)
    return out


class Running:
    """The services a backend started (or found), ready for provisioning: endpoints by service name."""

    def __init__(self, backend: str, postgres: PostgresEndpoint | None = None, redis: RedisEndpoint | None = None,
                 services: dict[str, Endpoint] | None = None, restored: bool = False) -> None:
        self.backend = backend
        self.services: dict[str, Endpoint] = dict(services or {})
        if postgres is not None:
            self.services["postgres"] = postgres
        if redis is not None:
            self.services["redis"] = redis
        self.restored = restored  # started from a migrated-and-seeded snapshot: skip migrate and seed

    @property
    def postgres(self) -> PostgresEndpoint | None:
        found = self.services.get("postgres")
        return found if isinstance(found, PostgresEndpoint) else None

    @property
    def redis(self) -> RedisEndpoint | None:
        found = self.services.get("redis")
        return found if isinstance(found, RedisEndpoint) else None

    @property
    def user(self) -> dict[str, ServiceEndpoint]:
        """The user-defined services' endpoints."""
        return {n: ep for n, ep in self.services.items() if isinstance(ep, ServiceEndpoint)}
