"""The agent's local password store: what Windows needs to run a command or a terminal as
another user (``LogonUser`` takes a password; Linux needs none).

Following Cloud Assistant's ``WindowsPasswordName``, passwords never travel over the wire:
the instance's administrator stores them on the instance (``porthole-agent password set
NAME``) and the agent looks a run-as user's password up by name. The file
(``STATE_DIR/passwords.json``) holds each password only in protected form; ``protect`` and
``unprotect`` are DPAPI on Windows (see ``agent.windows.secrets``) and are passed in, so
this module holds only the format and is the same on every platform.

    {"version": 1,
     "entries": {"alice": {"name": "Alice", "protected": "<base64>", "updated_at": 1.7e9}}}

Keys are the casefolded names (Windows user names ignore case).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.state import write_private

PASSWORD_FILE = "passwords.json"
FORMAT_VERSION = 1
MAX_PASSWORD = 256
"""Windows passwords are at most 256 characters."""
NAME_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}")
"""The names the server accepts as a run-as user name."""

Protector = Callable[[bytes, str], bytes]
"""protect(data, name) or unprotect(blob, name); ``name`` binds a blob to its entry."""


class PasswordStoreError(Exception):
    """The store cannot be read or changed; str() says why."""


@dataclass(frozen=True)
class Entry:
    name: str
    updated_at: float


class PasswordStore:
    def __init__(self, path: Path, protect: Protector, unprotect: Protector,
                 secure: Callable[[Path], None] | None = None) -> None:
        self.path = path
        self._protect = protect
        self._unprotect = unprotect
        self._secure = secure
        """Called on the file after each write (Windows: an owner-only access list)."""

    # --- reading -----------------------------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PasswordStoreError(f"cannot read {self.path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("version") != FORMAT_VERSION \
                or not isinstance(raw.get("entries"), dict):
            raise PasswordStoreError(f"{self.path} is not a version {FORMAT_VERSION} "
                                     "password store")
        entries: dict[str, dict[str, Any]] = raw["entries"]
        for key, entry in entries.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("protected"), str) \
                    or not isinstance(entry.get("name"), str) or key != entry["name"].casefold():
                raise PasswordStoreError(f"{self.path}: entry {key!r} is malformed")
        return entries

    def names(self) -> list[Entry]:
        """Every stored name, sorted (never the passwords)."""
        return sorted((Entry(e["name"], float(e.get("updated_at", 0.0)))
                       for e in self._load().values()), key=lambda e: e.name.casefold())

    def get(self, name: str) -> str | None:
        """The password stored under ``name``, or None."""
        entry = self._load().get(name.casefold())
        if entry is None:
            return None
        try:
            blob = base64.b64decode(entry["protected"], validate=True)
            return self._unprotect(blob, name.casefold()).decode("utf-8")
        except Exception as exc:  # a bad blob or a protector error: both mean unreadable
            raise PasswordStoreError(
                f"the password stored for {name!r} cannot be decrypted on this machine "
                f"({exc}); store it again with `porthole-agent password set {name}`") from None

    # --- changing ----------------------------------------------------------------------------

    def set(self, name: str, password: str) -> None:
        check_name(name)
        if not password or len(password) > MAX_PASSWORD or "\0" in password:
            raise PasswordStoreError(
                f"a password must be 1 to {MAX_PASSWORD} characters without NUL")
        entries = self._load()
        blob = self._protect(password.encode("utf-8"), name.casefold())
        entries[name.casefold()] = {"name": name, "updated_at": time.time(),
                                    "protected": base64.b64encode(blob).decode("ascii")}
        self._save(entries)

    def delete(self, name: str) -> bool:
        """Remove ``name``; False when it was not stored."""
        entries = self._load()
        if entries.pop(name.casefold(), None) is None:
            return False
        self._save(entries)
        return True

    def _save(self, entries: dict[str, dict[str, Any]]) -> None:
        data = json.dumps({"version": FORMAT_VERSION, "entries": entries}, indent=1,
                          sort_keys=True)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_private(self.path, data.encode("utf-8"))
            if self._secure is not None:
                self._secure(self.path)
        except OSError as exc:
            raise PasswordStoreError(f"cannot write {self.path}: {exc}") from None


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise PasswordStoreError(
            f"{name[:70]!r} is not a user name (letters, digits, '_', '.', '@', '-'; "
            "at most 64 characters)")
    return name
