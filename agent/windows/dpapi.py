"""The password store on Windows: entries protected with DPAPI in the machine's scope (the
administrator who runs ``porthole-agent password set`` and the LocalSystem service must
both read them), in a file only LocalSystem and Administrators may open. A copy of the file
is useless on another machine."""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.dpapi is for Windows"

from pathlib import Path

import win32crypt
import win32cryptcon

from agent.passwords import PASSWORD_FILE, PasswordStore
from agent.windows.acl import secure_path

ENTROPY = b"porthole-agent password\0"
"""Extra entropy (with the entry's name): other DPAPI users on the machine cannot open the
blobs by accident, and a blob moved to another entry does not decrypt."""
FLAGS = win32cryptcon.CRYPTPROTECT_LOCAL_MACHINE | win32cryptcon.CRYPTPROTECT_UI_FORBIDDEN


def protect(data: bytes, name: str) -> bytes:
    blob: bytes = win32crypt.CryptProtectData(
        data, "porthole-agent", ENTROPY + name.encode("utf-8"), None, None, FLAGS)
    return blob


def unprotect(blob: bytes, name: str) -> bytes:
    _description, data = win32crypt.CryptUnprotectData(
        blob, ENTROPY + name.encode("utf-8"), None, None,
        win32cryptcon.CRYPTPROTECT_UI_FORBIDDEN)
    return bytes(data)


def password_store(state_dir: Path) -> PasswordStore:
    return PasswordStore(state_dir / PASSWORD_FILE, protect, unprotect, secure=secure_path)
