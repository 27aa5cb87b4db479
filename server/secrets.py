"""Secrets at rest: the server master key, sealed access key secrets, password hashes.

Access key secrets must be recoverable (HMAC verification needs them), so they are sealed
with AES-256-GCM under a key derived from the master key, bound to the access key id. The
master key lives outside the database (``DATA_DIR/master.key``, mode 0600, or the file named
by ``PORTHOLE_MASTER_KEY_FILE``): a stolen database or backup alone yields no usable secret.
Console passwords are hashed with Argon2id, which is memory-hard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MASTER_KEY_FILE = "master.key"
MASTER_KEY_ENV = "PORTHOLE_MASTER_KEY_FILE"
SEALED_PREFIX = "v1:"
_KEY_BYTES = 32


class SecretError(Exception):
    """A master key that is missing or wrong, or a sealed value that does not open."""


def master_key_path(data_dir: Path) -> Path:
    override = os.environ.get(MASTER_KEY_ENV)
    return Path(override) if override else data_dir / MASTER_KEY_FILE


def create_master_key(path: Path) -> None:
    """Write a new random master key (hex, mode 0600); never overwrites one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(_KEY_BYTES).hex() + "\n")


class Keyring:
    """Keys derived from the master key, one per purpose."""

    def __init__(self, master: bytes) -> None:
        if len(master) != _KEY_BYTES:
            raise SecretError("master key must be 32 bytes")
        self._master = master
        self._derived: dict[str, bytes] = {}

    @classmethod
    def load(cls, path: Path) -> Keyring:
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise SecretError(f"cannot read master key {path}: {exc.strerror or exc}") from None
        try:
            return cls(bytes.fromhex(text))
        except (ValueError, SecretError):
            raise SecretError(f"master key {path} is not 64 hex characters") from None

    def key(self, purpose: str) -> bytes:
        if purpose not in self._derived:
            self._derived[purpose] = HKDF(
                algorithm=hashes.SHA256(), length=_KEY_BYTES, salt=None,
                info=b"porthole/" + purpose.encode(),
            ).derive(self._master)
        return self._derived[purpose]

    def mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self.key(purpose), data, hashlib.sha256).digest()

    def seal(self, plaintext: str, bound_to: str) -> str:
        nonce = os.urandom(12)
        sealed = AESGCM(self.key("secret-at-rest")).encrypt(
            nonce, plaintext.encode(), bound_to.encode())
        return SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, bound_to: str) -> str:
        if not sealed.startswith(SEALED_PREFIX):
            raise SecretError("value is not sealed")
        try:
            raw = base64.b64decode(sealed[len(SEALED_PREFIX):], validate=True)
            return AESGCM(self.key("secret-at-rest")).decrypt(
                raw[:12], raw[12:], bound_to.encode()).decode()
        except (ValueError, InvalidTag):
            raise SecretError("sealed value does not open with this master key") from None


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


# Argon2id, RFC 9106's second recommended option (64 MiB, 3 passes) scaled to a 2-core server.
_HASHER = PasswordHasher(time_cost=3, memory_cost=64 * 1024, parallelism=2)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored: str, password: str) -> bool:
    try:
        return _HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def constant_time_equal(a: str | bytes, b: str | bytes) -> bool:
    a_bytes = a.encode() if isinstance(a, str) else a
    b_bytes = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(a_bytes, b_bytes)


def repo_keyring(repo: object) -> Keyring:
    """The keyring a repository seals with: set at server start-up (``repo.keyring``), or,
    for an SQLite database opened on its own, the master key beside the database file."""
    keyring = getattr(repo, "keyring", None)
    if keyring is None:
        url = repo.engine.url  # type: ignore[attr-defined]
        if url.get_backend_name() != "sqlite" or not url.database:
            raise SecretError(f"no master key configured; set {MASTER_KEY_ENV}")
        keyring = Keyring.load(master_key_path(Path(url.database).parent))
        repo.keyring = keyring  # type: ignore[attr-defined]
    return keyring


async def install_keyring(data_dir: Path, repo: object) -> Keyring:
    """At server start: load (or, for a data directory that has none, create) the master
    key, give it to the repository, and seal any access key secret still stored in clear."""
    path = master_key_path(data_dir)
    if not path.exists():
        create_master_key(path)
    keyring = Keyring.load(path)
    repo.keyring = keyring  # type: ignore[attr-defined]
    await repo.seal_plaintext_secrets()  # type: ignore[attr-defined]
    return keyring
