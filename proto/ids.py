"""Identifiers: managed instances (mi-), commands (c-), invocations (t-), sessions (s-)."""

import re
import secrets
import uuid

INSTANCE_ID_RE = re.compile(r"^mi-[0-9a-f]{17}$")
COMMAND_ID_RE = re.compile(r"^c-[0-9a-f]{16,32}$")
INVOCATION_ID_RE = re.compile(r"^t-[0-9a-f]{16,32}$")
SESSION_ID_RE = re.compile(r"^s-[0-9a-f]{16,32}$")


def new_instance_id() -> str:
    return "mi-" + secrets.token_hex(9)[:17]


def new_command_id() -> str:
    return "c-" + secrets.token_hex(10)


def new_invocation_id() -> str:
    return "t-" + secrets.token_hex(10)


def new_session_id() -> str:
    return "s-" + secrets.token_hex(10)


def new_activation() -> tuple[str, str]:
    """An activation id (UUID) and its secret code."""
    return str(uuid.uuid4()), secrets.token_urlsafe(24)


def new_access_key() -> tuple[str, str]:
    """An access key id and its secret."""
    return "PH" + secrets.token_hex(10).upper(), secrets.token_urlsafe(30)


def is_instance_id(value: str) -> bool:
    return bool(INSTANCE_ID_RE.match(value))
