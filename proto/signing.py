"""HMAC-SHA256 request signing of the operator API, shared by the CLI and the server.

The string to sign binds method, path, query, a hash of the body, a timestamp and a nonce,
so a captured request cannot be altered, and the server refuses it when stale or replayed.
"""

import hashlib
import hmac
from urllib.parse import parse_qsl, urlencode

ALGORITHM = "PH1-HMAC-SHA256"
MAX_SKEW_SECONDS = 15 * 60
HEADER_KEY_ID = "X-Porthole-Access-Key"
HEADER_TIMESTAMP = "X-Porthole-Timestamp"
HEADER_NONCE = "X-Porthole-Nonce"
HEADER_SIGNATURE = "X-Porthole-Signature"
HEADER_TOKEN = "X-Porthole-Security-Token"


def canonical_query(query: str) -> str:
    return urlencode(sorted(parse_qsl(query, keep_blank_values=True)))


def string_to_sign(
    method: str, path: str, query: str, body: bytes, timestamp: str, nonce: str, key_id: str,
    token: str = "",
) -> bytes:
    """With temporary credentials the SHA-256 of the security token is a ninth line."""
    lines = [
        ALGORITHM,
        method.upper(),
        path,
        canonical_query(query),
        hashlib.sha256(body).hexdigest(),
        timestamp,
        nonce,
        key_id,
    ]
    if token:
        lines.append(hashlib.sha256(token.encode()).hexdigest())
    return "\n".join(lines).encode()


def sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify(secret: str, message: bytes, signature: str) -> bool:
    """Constant-time; any header text (even non-ASCII) is just a mismatch."""
    return hmac.compare_digest(sign(secret, message).encode(),
                               signature.encode("utf-8", "replace"))
