"""Signed calls to the operator API."""

from __future__ import annotations

import calendar
import dataclasses
import hashlib
import http.client
import json
import os
import secrets
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from cli.config import ConfigError, Profile, config_path, with_source
from proto import signing


class ApiError(Exception):
    """The server answered with an error."""

    def __init__(self, status: int, code: str, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class ConnectError(Exception):
    """The server could not be reached; str() says what to check."""


class Client:
    def __init__(self, profile: Profile, timeout: float = 30.0) -> None:
        self.profile = profile = with_source(profile).require()
        parts = urlsplit(profile.server)
        if parts.scheme != "https" or not parts.hostname:
            raise ConnectError(f"server URL {profile.server!r} must look like https://HOST:PORT")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.timeout = timeout
        try:
            self.ssl = ssl.create_default_context(cafile=profile.ca_file or None)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot load CA file {profile.ca_file}: {exc}") from None
        self.role = RoleCredentials(self) if profile.role_arn else None
        self._conn: http.client.HTTPSConnection | None = None

    def credentials(self) -> tuple[str, str, str]:
        """(access key id, secret, security token): the role's, renewed before expiry, for a
        profile with role_arn; the profile's own otherwise."""
        if self.role is not None:
            return self.role.current()
        p = self.profile
        return p.access_key_id, p.access_key_secret, p.security_token

    def signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        key_id, secret, token = self.credentials()
        timestamp = f"{time.time():.3f}"
        nonce = secrets.token_hex(16)
        message = signing.string_to_sign(method, path, "", body, timestamp, nonce, key_id,
                                         token)
        headers = {
            "Content-Type": "application/json",
            signing.HEADER_KEY_ID: key_id,
            signing.HEADER_TIMESTAMP: timestamp,
            signing.HEADER_NONCE: nonce,
            signing.HEADER_SIGNATURE: signing.sign(secret, message),
        }
        if token:
            headers[signing.HEADER_TOKEN] = token
        return headers

    def call(self, action: str, **params: Any) -> dict[str, Any]:
        path = f"/api/v1/{action}"
        body = json.dumps({k: v for k, v in params.items() if v is not None}).encode()
        try:
            status, data = self.raw("POST", path, body, self.signed_headers("POST", path, body))
        except _StaleConnection:  # a kept-alive connection the server had closed: sign anew
            status, data = self.raw("POST", path, body, self.signed_headers("POST", path, body))
        try:
            reply = json.loads(data)
        except ValueError:
            raise ApiError(status, "InvalidResponse", f"server sent non-JSON (HTTP {status})") \
                from None
        if status != 200:
            raise ApiError(status, reply.get("Code", "Error"), reply.get("Message", ""),
                           reply.get("RequestId", ""))
        return reply

    def raw(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        reused = self._conn is not None
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.ssl, timeout=self.timeout
            )
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            return response.status, response.read()
        except ssl.SSLCertVerificationError as exc:
            self.close()
            raise ConnectError(
                f"TLS certificate of {self.profile.server} is not trusted ({exc.verify_message});"
                " set the server's CA with `porthole configure --ca-file`"
            ) from None
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
            self.close()
            if reused:
                raise _StaleConnection() from None
            raise ConnectError(f"server {self.profile.server} closed the connection: {exc}") \
                from None
        except OSError as exc:
            self.close()
            raise ConnectError(
                f"cannot reach {self.profile.server}: {exc.strerror or exc}; "
                "is porthole-server running?"
            ) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _StaleConnection(Exception):
    pass


RENEW_BEFORE = 300.0
"""Temporary credentials are renewed when fewer seconds than this remain (proportionally
fewer for lifetimes under 30 minutes)."""


class RoleCredentials:
    """Temporary credentials of the profile's role_arn, cached (mode 0600) under
    ~/.porthole/cache/ and renewed with AssumeRole before they expire."""

    def __init__(self, client: Client) -> None:
        self.client = client
        p = client.profile
        digest = hashlib.sha256(f"{p.server}|{p.access_key_id}|{p.role_arn}".encode())
        self.cache = config_path().parent / "cache" / f"role-{digest.hexdigest()[:24]}.json"
        self.creds: dict[str, Any] | None = None

    def _fresh(self, creds: dict[str, Any] | None) -> bool:
        if not creds:
            return False
        left = creds["ExpiresAt"] - time.time()
        return left > max(RENEW_BEFORE * min(1.0, creds["Lifetime"] / 1800), 0)

    def current(self) -> tuple[str, str, str]:
        if not self._fresh(self.creds):
            self.creds = self._load()
        if not self._fresh(self.creds):
            self.creds = self._assume()
            self._save(self.creds)
        c = self.creds
        assert c is not None
        return c["AccessKeyId"], c["AccessKeySecret"], c["SecurityToken"]

    def _assume(self) -> dict[str, Any]:
        p = self.client.profile
        base = Client(dataclasses.replace(p, role_arn="", security_token=""),
                      self.client.timeout)
        params: dict[str, Any] = {"RoleArn": p.role_arn,
                                  "RoleSessionName": p.role_session_name or _session_name()}
        if p.duration_seconds:
            try:
                params["DurationSeconds"] = int(p.duration_seconds)
            except ValueError:
                raise ConfigError(f"duration_seconds {p.duration_seconds!r} of profile "
                                  f"{p.name!r} is not a number of seconds") from None
        try:
            creds = base.call("AssumeRole", **params)["Credentials"]
        finally:
            base.close()
        expires = calendar.timegm(time.strptime(creds["Expiration"], "%Y-%m-%dT%H:%M:%SZ"))
        return {**{k: creds[k] for k in ("AccessKeyId", "AccessKeySecret", "SecurityToken")},
                "ExpiresAt": expires, "Lifetime": max(1.0, expires - time.time())}

    def _load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.cache.read_text())
            return data if {"AccessKeyId", "AccessKeySecret", "SecurityToken", "ExpiresAt",
                            "Lifetime"} <= set(data) else None
        except (OSError, ValueError, TypeError):
            return None

    def _save(self, creds: dict[str, Any]) -> None:
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.cache.with_suffix(f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(creds, f)
            os.replace(tmp, self.cache)
        except OSError:
            pass  # no cache: the next command assumes the role again


def _session_name() -> str:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "porthole"
    name = "".join(ch if ch.isalnum() or ch in "._@=,-" else "-" for ch in user)[:48]
    return f"{name}-{int(time.time())}" if len(name) >= 1 else f"porthole-{int(time.time())}"
