"""Failed-authentication throttling (per access key and per source address) and request
size limits.

Each key and each address has a bucket of allowed failures that refills at a steady rate;
while a bucket is empty, requests with that key or from that address are refused (HTTP 429)
before any credential is looked up. Successful requests cost nothing.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from server.errors import ApiError


@dataclass
class _Bucket:
    tokens: float
    updated: float


class FailureLimiter:
    def __init__(self, burst: float, per_second: float, max_tracked: int = 100_000) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, name: str, now: float) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket(self.burst, now)
            if len(self._buckets) > self.max_tracked:  # bounded memory under a key spray
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated)
                                * self.per_second)
            bucket.updated = now
            self._buckets.move_to_end(name)
        return bucket

    def retry_after(self, name: str, now: float | None = None) -> float:
        """Seconds until `name` may fail again (0: not throttled)."""
        now = time.monotonic() if now is None else now
        if name not in self._buckets:
            return 0.0
        bucket = self._bucket(name, now)
        return 0.0 if bucket.tokens >= 1 else (1 - bucket.tokens) / self.per_second

    def failed(self, name: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        bucket = self._bucket(name, now)
        bucket.tokens = max(0.0, bucket.tokens - 1)


class AuthThrottle:
    """The two limiters authentication consults.

    A key whose failure budget is spent is refused only from addresses that have not signed
    in with it successfully in the last hour: whoever floods a known key id with bad
    signatures cannot lock its owner out."""

    def __init__(self, per_address: tuple[float, float] = (30, 0.5),
                 per_key: tuple[float, float] = (20, 0.2), trusted_for: float = 3600.0,
                 max_trusted: int = 100_000) -> None:
        self.addresses = FailureLimiter(*per_address)
        self.keys = FailureLimiter(*per_key)
        self.trusted_for = trusted_for
        self.max_trusted = max_trusted
        self._good: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _known_good(self, address: str, key_id: str) -> bool:
        seen = self._good.get((key_id, address))
        return seen is not None and time.monotonic() - seen < self.trusted_for

    def check(self, address: str, key_id: str) -> None:
        checks = [(self.addresses, address, f"from {address}")]
        if not self._known_good(address, key_id):
            checks.append((self.keys, key_id, f"for access key {key_id[:64]}"))
        for limiter, name, what in checks:
            if name:
                wait = limiter.retry_after(name)
                if wait > 0:
                    raise ApiError(429, "Throttling.Authentication",
                                   f"too many failed authentications {what}; retry in "
                                   f"{math.ceil(wait)} s")

    def failed(self, address: str, key_id: str) -> None:
        if address:
            self.addresses.failed(address)
        if key_id:
            self.keys.failed(key_id)

    def succeeded(self, address: str, key_id: str) -> None:
        self._good[(key_id, address)] = time.monotonic()
        self._good.move_to_end((key_id, address))
        if len(self._good) > self.max_trusted:
            self._good.popitem(last=False)


AUTH_THROTTLE = AuthThrottle()
"""One per server process."""


# --- request size limits -------------------------------------------------------------------

BODY_LIMITS: tuple[tuple[str, int], ...] = (
    ("/agent/v1/register", 16 * 1024),
    ("/api/v1/", 1024 * 1024),
)
"""Largest request body per path prefix; WebSocket frames are bounded by the protocol."""
_NESTING_SUSPECT = 256


def _refuse(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"Code": code, "Message": message,
                              "RequestId": str(uuid.uuid4())}, status=status)


@web.middleware
async def request_limits(request: web.Request, handler: Any) -> web.StreamResponse:
    """Refuse oversized or absurdly nested bodies with a JSON error before any handler."""
    if request.method in ("POST", "PUT", "PATCH"):
        limit = next((n for prefix, n in BODY_LIMITS if request.path.startswith(prefix)),
                     None)
        if limit is not None:
            too_big = _refuse(413, "RequestTooLarge", f"request body is larger than {limit} "
                                                      f"bytes")
            if request.content_length is not None and request.content_length > limit:
                return too_big
            try:
                body = await request.read()  # cached: the handler reads it again for free
            except web.HTTPRequestEntityTooLarge:
                return too_big
            if len(body) > limit:
                return too_big
            if body.count(b"[") + body.count(b"{") > _NESTING_SUSPECT:
                try:
                    json.loads(body)
                except RecursionError:
                    return _refuse(400, "InvalidJSON", "request body is nested too deeply")
                except ValueError:
                    pass  # the handler reports malformed JSON itself
    return await handler(request)
