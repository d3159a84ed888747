"""Redis: rate limiting and the product cache."""

from __future__ import annotations

import redis
from sqlalchemy.orm import Session

from demo.cache import ProductCache, RateLimiter
from demo.models import Product


def test_rate_limiter(redis_client: redis.Redis) -> None:
    now = [1_700_000_000.0]
    limiter = RateLimiter(redis_client, limit=3, window=60, clock=lambda: now[0])

    assert [limiter.hit("login:bob") for _ in range(4)] == [True, True, True, False]
    assert limiter.remaining("login:bob") == 0
    assert limiter.hit("login:alice") is True  # keys are independent

    keys = redis_client.keys("ratelimit:login:bob:*")
    assert len(keys) == 1
    assert 0 < redis_client.ttl(keys[0]) <= 60  # INCR'd key has an EXPIRE

    now[0] += 60  # next window
    assert limiter.hit("login:bob") is True
    assert limiter.remaining("login:bob") == 2


def test_product_cache(
    session: Session, redis_client: redis.Redis, products: dict[str, Product]
) -> None:
    cache = ProductCache(redis_client, ttl=30)
    gig = products["gig"]

    first = cache.get(session, gig.id)
    assert first is not None and first["sku"] == "TCK-GIG" and first["price_cents"] == 4500
    assert (cache.hits, cache.misses) == (0, 1)
    assert 0 < redis_client.ttl(f"product:{gig.id}") <= 30

    gig.price_cents = 3900
    session.flush()
    assert cache.get(session, gig.id)["price_cents"] == 4500  # served from Redis
    assert cache.hits == 1

    cache.invalidate(gig.id)
    assert cache.get(session, gig.id)["price_cents"] == 3900
    assert cache.misses == 2

    assert cache.get(session, 10**12) is None  # unknown ids are not cached
    assert redis_client.exists(f"product:{10**12}") == 0
