"""The agent's state directory: identity key, registration record, pinned CA."""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_STATE_DIR = "/var/lib/porthole-agent"
KEY_FILE = "agent.key"
RECORD_FILE = "agent.json"
CA_FILE = "ca.pem"


class StateError(Exception):
    """A problem with the state directory; str() says what to do."""


def default_state_dir() -> Path:
    return Path(os.environ.get("PORTHOLE_AGENT_STATE_DIR", DEFAULT_STATE_DIR))


def write_private(path: Path, data: bytes, durable: bool = True) -> None:
    """Write a file readable by its owner only, replacing it atomically; ``durable`` waits
    until it is on disk."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        if durable:
            os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class AgentState:
    directory: Path
    instance_id: str
    server: str
    region: str
    key: Ed25519PrivateKey

    @property
    def servers(self) -> list[str]:
        """The server URLs, in order (``server`` may list several, separated by commas)."""
        return split_servers(self.server)

    @property
    def ca_file(self) -> Path:
        return self.directory / CA_FILE

    def ssl_context(self) -> ssl.SSLContext:
        return pinned_context(self.ca_file)

    @classmethod
    def load(cls, directory: Path) -> AgentState:
        record_path = directory / RECORD_FILE
        if not record_path.exists():
            raise StateError(
                f"{directory} holds no registration; run `porthole-agent register` first"
            )
        try:
            record = json.loads(record_path.read_text())
            key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the agent state in {directory}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise StateError(f"{directory / KEY_FILE} is not an Ed25519 key")
        return cls(directory, record["InstanceId"], record["Server"], record["Region"], key)


def split_servers(value: str) -> list[str]:
    servers = [s.strip().rstrip("/") for s in value.split(",") if s.strip()]
    if not servers:
        raise StateError("no server URL given")
    return servers


def pinned_context(ca_file: Path) -> ssl.SSLContext:
    """A client TLS context that trusts only the deployment's CA."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise StateError(f"cannot load CA file {ca_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def new_key() -> tuple[Ed25519PrivateKey, bytes]:
    """A fresh identity key and its PEM encoding."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key, pem


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)
