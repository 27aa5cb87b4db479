"""Operator request authentication: HMAC signature, freshness and nonce replay checks."""

from __future__ import annotations

import time

from aiohttp import web

from proto import signing
from server.authz import Principal, policies_named
from server.errors import ApiError
from server.storage import Repository


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


async def authenticate(request: web.Request, body: bytes, repo: Repository) -> Principal:
    key_id = request.headers.get(signing.HEADER_KEY_ID, "")
    timestamp = request.headers.get(signing.HEADER_TIMESTAMP, "")
    nonce = request.headers.get(signing.HEADER_NONCE, "")
    signature = request.headers.get(signing.HEADER_SIGNATURE, "")
    if not (key_id and timestamp and nonce and signature):
        raise _unauthorized(
            "MissingAuthentication",
            "request is not signed; set credentials with `porthole configure`",
        )
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise _unauthorized("InvalidTimestamp", "timestamp is not a number") from None
    if abs(time.time() - sent_at) > signing.MAX_SKEW_SECONDS:
        raise _unauthorized(
            "RequestExpired",
            "request timestamp is more than 15 minutes from server time; check the clock",
        )
    if not 16 <= len(nonce) <= 128:
        raise _unauthorized("InvalidNonce", "nonce must be 16 to 128 characters")
    key = await repo.access_key(key_id)
    if key is None or key["status"] != "Active":
        raise _unauthorized("InvalidAccessKeyId", f"access key {key_id[:64]} is not valid")
    message = signing.string_to_sign(
        request.method, request.path, request.query_string, body, timestamp, nonce, key_id
    )
    if not signing.verify(key["secret"], message, signature):
        raise _unauthorized(
            "SignatureDoesNotMatch", "request signature does not match; check the access key secret"
        )
    if not await repo.remember_nonce(key_id, nonce, 2 * signing.MAX_SKEW_SECONDS):
        raise _unauthorized("ReplayedRequest", "this request was already received (nonce reused)")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return Principal(
        name=key["user_name"],
        key_id=key_id,
        policies=policies_named(await repo.user_policy_names(key["user_name"])),
        source_ip=(peer[0] if peer else request.remote) or "",
        secure_transport=request.secure,
    )
