"""Litestar's rate limiter, with the period in seconds and a ``Retry-After`` header.

Litestar counts per fixed window of one second/minute/hour/day; Infernet configs give
``{"num_requests", "period"}`` with any period, and clients expect ``Retry-After`` on
a 429 (added from ``RateLimit-Reset`` by ``app.http.errors``). Only the window is
changed here; the counting, locking and the store are Litestar's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from time import time
from typing import Any

from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.serialization import decode_json, encode_json
from litestar.stores.base import Store


class PeriodRateLimitMiddleware(RateLimitMiddleware):
    config: PeriodRateLimitConfig

    async def retrieve_cached_history(self, key: str, store: Store) -> CacheObject:
        now = time()
        cached = await store.get(key)
        if cached:
            cache_object = CacheObject(**decode_json(value=cached))
            if cache_object.reset > now:
                return cache_object
        return CacheObject(history=[], reset=now + self.config.period)  # type: ignore[arg-type]

    async def set_cached_history(self, key: str, cache_object: CacheObject, store: Store) -> None:
        cache_object.history.append(int(time()))
        expires = max(1, math.ceil(cache_object.reset - time()))
        await store.set(key, encode_json(cache_object), expires_in=expires)

    def create_response_headers(self, cache_object: CacheObject) -> dict[str, str]:
        remaining = max(0, self.max_requests - len(cache_object.history))
        reset = max(1, math.ceil(cache_object.reset - time()))
        return {
            self.config.rate_limit_policy_header_key: f"{self.max_requests}; w={math.ceil(self.config.period)}",
            self.config.rate_limit_limit_header_key: str(self.max_requests),
            self.config.rate_limit_remaining_header_key: str(remaining),
            self.config.rate_limit_reset_header_key: str(reset),
        }


@dataclass
class PeriodRateLimitConfig(RateLimitConfig):
    period: float = 60.0
    middleware_class: type[RateLimitMiddleware] = field(default=PeriodRateLimitMiddleware)


def rate_limit_config(num_requests: int, period: float, identifier: Any) -> PeriodRateLimitConfig:
    return PeriodRateLimitConfig(
        rate_limit=("second", num_requests),
        period=period,
        identifier_for_request=identifier,
        exclude=[r"^/health(/live|/ready)?$", r"^/metrics$"],
        set_rate_limit_headers=True,
    )
