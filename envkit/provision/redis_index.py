"""The Redis index envkit hands to the tests: checked to exist on the server that runs, whatever the backend.

A server has ``databases`` indexes (16 by default: 0 to 15). ``redis.db = 99``
would otherwise pass, and every client of the tests fail on ``SELECT``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..services import RedisEndpoint

log = logging.getLogger("envkit")


def check(endpoint: RedisEndpoint, where: str = "redis.db") -> None:
    """Raise ConfigError when ``endpoint.db`` is not an index of the server (index 0 always is)."""
    if endpoint.db == 0:
        return
    import redis

    client = redis.Redis(host=endpoint.host, port=endpoint.port, password=endpoint.password, socket_timeout=5)
    try:
        count = _databases(client)
        if count is not None and endpoint.db < count:
            return
        try:
            client.execute_command("SELECT", endpoint.db)
            return  # CONFIG GET is refused (a managed Redis) and SELECT succeeds: the index exists
        except redis.ResponseError:
            pass
    except (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError) as exc:
        log.debug("redis: could not check index %d on %s:%d: %s", endpoint.db, endpoint.host, endpoint.port, exc)
        return  # only a server's own "no such index" is a verdict; the backend vouched for its readiness
    finally:
        client.close()
    have = f"has {count} databases (0 to {count - 1})" if count else "refuses that index"
    raise ConfigError(
        f"{where} is {endpoint.db}, but the Redis server at {endpoint.host}:{endpoint.port} {have}. Set {where} (or "
        "ENVKIT_REDIS_DB, or the index in the path of the Redis URL) to an index the server has, or raise the "
        "server's `databases` setting"
    )


def _databases(client: object) -> int | None:
    import redis

    try:
        reply = client.config_get("databases")  # type: ignore[attr-defined]
    except redis.ResponseError:  # CONFIG disabled or renamed
        return None
    value = reply.get("databases") if isinstance(reply, dict) else None
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
