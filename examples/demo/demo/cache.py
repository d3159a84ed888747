"""Redis helpers: a fixed-window rate limiter and a read-through product cache."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy.orm import Session

from demo.models import Product


def redis_from_env(url: str | None = None) -> redis.Redis:
    """Client for ``url`` or the ``REDIS_URL`` environment variable."""
    url = url or os.environ.get("REDIS_URL")
    if not url:
        raise RuntimeError("REDIS_URL is not set; expected e.g. redis://localhost:6379/0")
    return redis.Redis.from_url(url, decode_responses=True)


@dataclass
class RateLimiter:
    """At most ``limit`` hits per ``window`` seconds per key (INCR + EXPIRE)."""

    client: redis.Redis
    limit: int
    window: int = 60
    prefix: str = "ratelimit"
    clock: Callable[[], float] = field(default=time.time, repr=False)

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}:{int(self.clock()) // self.window}"

    def hit(self, key: str) -> bool:
        """Count one request for ``key``; True if it is within the limit."""
        k = self._key(key)
        count = self.client.incr(k)
        if count == 1 or self.client.ttl(k) == -1:
            # first hit of this window (or a previous EXPIRE was lost)
            self.client.expire(k, self.window)
        return count <= self.limit

    def remaining(self, key: str) -> int:
        used = int(self.client.get(self._key(key)) or 0)
        return max(self.limit - used, 0)


class ProductCache:
    """Caches product lookups as JSON under ``product:<id>`` for ``ttl`` seconds."""

    def __init__(self, client: redis.Redis, ttl: int = 60, prefix: str = "product") -> None:
        self.client = client
        self.ttl = ttl
        self.prefix = prefix
        self.hits = 0
        self.misses = 0

    def _key(self, product_id: int) -> str:
        return f"{self.prefix}:{product_id}"

    @staticmethod
    def _serialize(p: Product) -> dict[str, Any]:
        return {
            "id": p.id,
            "sku": p.sku,
            "name": p.name,
            "price_cents": p.price_cents,
            "stock": p.stock,
            "is_active": p.is_active,
        }

    def get(self, session: Session, product_id: int) -> dict[str, Any] | None:
        raw = self.client.get(self._key(product_id))
        if raw is not None:
            self.hits += 1
            return json.loads(raw)
        self.misses += 1
        product = session.get(Product, product_id)
        if product is None:
            return None
        data = self._serialize(product)
        self.client.set(self._key(product_id), json.dumps(data), ex=self.ttl)
        return data

    def invalidate(self, product_id: int) -> None:
        self.client.delete(self._key(product_id))
