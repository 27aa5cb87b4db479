"""Operator request authentication: HMAC signature, freshness, nonce replay checks, temporary
credentials (security tokens from AssumeRole) and failed-authentication throttling."""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from typing import Any

from aiohttp import web

from proto import signing
from server.authz import TAGS, Principal, load_policies
from server.errors import ApiError
from server.ratelimit import AUTH_THROTTLE
from server.secrets import Keyring, constant_time_equal, repo_keyring
from server.storage import Repository

STS_PREFIX = "STS."
TOKEN_PREFIX = "PHT1."
MAX_TOKEN_CHARS = 2048


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message)


# --- temporary credentials -----------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def temporary_secret(keyring: Keyring, key_id: str) -> str:
    """The secret of a temporary key is derived from its id, so nothing is stored."""
    return _b64(keyring.mac("sts-secret", key_id.encode()))


def issue_temporary_credentials(keyring: Keyring, role: dict[str, Any], session_name: str,
                                source: str, duration: int) -> dict[str, Any]:
    now = time.time()
    key_id = STS_PREFIX + secrets.token_hex(10).upper()
    claims = {"kid": key_id, "role": role["name"], "rct": role["created_at"],
              "session": session_name, "src": source, "iat": int(now), "exp": int(now) + duration}
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    token = f"{TOKEN_PREFIX}{payload}.{_b64(keyring.mac('sts-token', payload.encode()))}"
    return {"AccessKeyId": key_id, "AccessKeySecret": temporary_secret(keyring, key_id),
            "SecurityToken": token, "Expiration": claims["exp"]}


def verify_token(keyring: Keyring, token: str, key_id: str) -> dict[str, Any]:
    """The token's claims; 401 if it is malformed, tampered with, for another key, or expired."""
    bad = _unauthorized("InvalidSecurityToken", "security token is malformed or was altered")
    if len(token) > MAX_TOKEN_CHARS or not token.startswith(TOKEN_PREFIX):
        raise bad
    payload, _, mac = token[len(TOKEN_PREFIX):].partition(".")
    expected = _b64(keyring.mac("sts-token", payload.encode()))
    if not constant_time_equal(expected, mac.encode("utf-8", "replace")):
        raise bad
    try:
        claims = json.loads(_unb64(payload))
    except (ValueError, binascii.Error):
        raise bad from None
    if not isinstance(claims, dict) or claims.get("kid") != key_id:
        raise _unauthorized("InvalidSecurityToken", "security token belongs to another key")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= time.time():
        raise _unauthorized("SecurityTokenExpired",
                            "security token has expired; assume the role again")
    return claims


# --- authentication ------------------------------------------------------------------------


async def authenticate(request: web.Request, body: bytes, repo: Repository) -> Principal:
    key_id = request.headers.get(signing.HEADER_KEY_ID, "")
    source = request.remote or ""
    AUTH_THROTTLE.check(source, key_id[:64])
    try:
        principal = await _authenticate(request, body, repo, key_id)
    except ApiError as exc:
        if exc.status == 401:
            AUTH_THROTTLE.failed(source, key_id[:64])
        raise
    AUTH_THROTTLE.succeeded(source, key_id)
    await TAGS.refresh(repo)
    return principal


async def _authenticate(request: web.Request, body: bytes, repo: Repository,
                        key_id: str) -> Principal:
    timestamp = request.headers.get(signing.HEADER_TIMESTAMP, "")
    nonce = request.headers.get(signing.HEADER_NONCE, "")
    signature = request.headers.get(signing.HEADER_SIGNATURE, "")
    token = request.headers.get(signing.HEADER_TOKEN, "")
    if not (key_id and timestamp and nonce and signature):
        raise _unauthorized(
            "MissingAuthentication",
            "request is not signed; set credentials with `porthole configure`",
        )
    try:
        sent_at = float(timestamp)
    except ValueError:
        raise _unauthorized("InvalidTimestamp", "timestamp is not a number") from None
    if not abs(time.time() - sent_at) <= signing.MAX_SKEW_SECONDS:  # also refuses NaN
        raise _unauthorized(
            "RequestExpired",
            "request timestamp is more than 15 minutes from server time; check the clock",
        )
    if not 16 <= len(nonce) <= 128:
        raise _unauthorized("InvalidNonce", "nonce must be 16 to 128 characters")
    if len(key_id) > 64:
        raise _unauthorized("InvalidAccessKeyId", f"access key {key_id[:64]}... is not valid")
    peer = request.transport.get_extra_info("peername") if request.transport else None
    source_ip = (peer[0] if peer else request.remote) or ""
    if key_id.startswith(STS_PREFIX):
        secret, principal = await _temporary(repo, key_id, token)
    else:
        if token:
            raise _unauthorized("InvalidSecurityToken",
                                "a security token goes only with a temporary (STS.) key")
        secret, principal = await _long_term(repo, key_id)
    message = signing.string_to_sign(
        request.method, request.path, request.query_string, body, timestamp, nonce, key_id,
        token,
    )
    if not signing.verify(secret, message, signature):
        raise _unauthorized(
            "SignatureDoesNotMatch", "request signature does not match; check the access key secret"
        )
    if not await repo.remember_nonce(key_id, nonce, 2 * signing.MAX_SKEW_SECONDS):
        raise _unauthorized("ReplayedRequest", "this request was already received (nonce reused)")
    principal.source_ip = source_ip
    principal.secure_transport = request.secure
    return principal


async def _long_term(repo: Repository, key_id: str) -> tuple[str, Principal]:
    key = await repo.access_key(key_id)
    if key is None or key["status"] != "Active":
        raise _unauthorized("InvalidAccessKeyId", f"access key {key_id} is not valid")
    names = await repo.user_policy_names(key["user_name"])
    return key["secret"], Principal(name=key["user_name"], key_id=key_id,
                                    policies=await load_policies(repo, names))


async def _temporary(repo: Repository, key_id: str, token: str) -> tuple[str, Principal]:
    if not token:
        raise _unauthorized("MissingSecurityToken", f"temporary key {key_id} needs its "
                            f"security token in {signing.HEADER_TOKEN}")
    keyring = repo_keyring(repo)
    claims = verify_token(keyring, token, key_id)
    role = await repo.role(str(claims.get("role")))
    if role is None or role["created_at"] != claims.get("rct"):
        raise _unauthorized("InvalidSecurityToken", f"role {claims.get('role')} no longer exists")
    names = await repo.attached_policies("role", role["name"])
    return temporary_secret(keyring, key_id), Principal(
        name=f"{role['name']}/{claims.get('session')}", key_id=key_id, kind="assumed-role",
        policies=await load_policies(repo, names), expires_at=float(claims["exp"]))
