"""Signed calls to the operator API."""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from cli.config import Profile
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
        self.profile = profile.require()
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
        self._conn: http.client.HTTPSConnection | None = None

    def signed_headers(self, method: str, path: str, body: bytes) -> dict[str, str]:
        timestamp = f"{time.time():.3f}"
        nonce = secrets.token_hex(16)
        key_id = self.profile.access_key_id
        message = signing.string_to_sign(method, path, "", body, timestamp, nonce, key_id)
        return {
            "Content-Type": "application/json",
            signing.HEADER_KEY_ID: key_id,
            signing.HEADER_TIMESTAMP: timestamp,
            signing.HEADER_NONCE: nonce,
            signing.HEADER_SIGNATURE: signing.sign(self.profile.access_key_secret, message),
        }

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
