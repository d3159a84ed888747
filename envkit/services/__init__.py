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

from collections.abc import Sequence
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..config import Config
from . import postgres, redis
from .postgres import PostgresEndpoint
from .redis import RedisEndpoint

if TYPE_CHECKING:
    from .container import Container
    from .user import Probe, ServiceEndpoint, ServiceSpec, recipes, unsupported

    Endpoint = PostgresEndpoint | RedisEndpoint | ServiceEndpoint

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

#: Imported on first use: a project without ``[services.NAME]`` never needs the user services' module (its
#: records, checks and recipe loader), nor a native start the container records.
_LAZY = {"Container": "container", "Probe": "user", "ServiceEndpoint": "user", "ServiceSpec": "user",
         "recipes": "user", "unsupported": "user"}


def __getattr__(name: str) -> Any:
    if name == "Endpoint":
        from .user import ServiceEndpoint

        value: Any = PostgresEndpoint | RedisEndpoint | ServiceEndpoint
    elif name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


#: The built-in services, by name: their module and endpoint type.
BUILTIN: dict[str, type[PostgresEndpoint] | type[RedisEndpoint]] = {"postgres": PostgresEndpoint, "redis": RedisEndpoint}


def specs(config: Config) -> list[ServiceSpec]:
    """The configured user services (``[services.NAME]``), each after what it depends on (:func:`.user.specs`)."""
    if not config.services:
        return []
    from .user import specs as user_specs

    return user_specs(config)


class _Ordered(Protocol):
    name: str
    depends_on: tuple[str, ...]


T = TypeVar("T", bound=_Ordered)


def waves(user: Sequence[T]) -> list[list[T]]:
    """The services in groups that may start side by side: each group needs only the groups before it.

    ``user`` is in dependency order (:func:`specs`); a name it depends on but does not hold is started already.
    """
    level: dict[str, int] = {}
    for spec in user:
        level[spec.name] = max((level[d] + 1 for d in spec.depends_on if d in level), default=0)
    groups: dict[int, list[T]] = {}
    for spec in user:
        groups.setdefault(level[spec.name], []).append(spec)
    return [groups[k] for k in sorted(groups)]


def containers(config: Config, password: str) -> list[Container[Any]]:
    """What a container backend runs for ``config``: the enabled built-ins, then the user services, each after
    what it depends on. ``password`` is the environment's (:func:`password`)."""
    from . import user

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
            from .user import ServiceEndpoint

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
        # by kind, not isinstance: the user services' module is imported only for a configuration that has some
        return {n: ep for n, ep in self.services.items() if ep.kind == "service"}  # type: ignore[misc]
