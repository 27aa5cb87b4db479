"""Access lists for the agent's files on Windows. ``%ProgramData%`` lets every local user
read what is created below it, so the state directory (identity key, password store,
spool) gets a list of its own: LocalSystem and Administrators only."""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.acl is for Windows"

from pathlib import Path

import ntsecuritycon
import win32security
from _win32typing import PySID

LOCAL_SYSTEM = "S-1-5-18"
ADMINISTRATORS = "S-1-5-32-544"


def _apply(path: Path, grants: list[tuple[PySID, int]], inherit: bool) -> None:
    flags = ntsecuritycon.CONTAINER_INHERIT_ACE | ntsecuritycon.OBJECT_INHERIT_ACE \
        if inherit else 0
    dacl = win32security.ACL()
    for sid, access in grants:
        dacl.AddAccessAllowedAceEx(win32security.ACL_REVISION, flags, access, sid)
    # PROTECTED: nothing is inherited from the parent directory.
    win32security.SetNamedSecurityInfo(
        str(path), win32security.SE_FILE_OBJECT,
        win32security.DACL_SECURITY_INFORMATION
        | win32security.PROTECTED_DACL_SECURITY_INFORMATION, None, None, dacl, None)


def _owners() -> list[tuple[PySID, int]]:
    return [(win32security.ConvertStringSidToSid(sid), ntsecuritycon.FILE_ALL_ACCESS)
            for sid in (LOCAL_SYSTEM, ADMINISTRATORS)]


def secure_path(path: Path) -> None:
    """LocalSystem and Administrators only (inherited by whatever a directory holds)."""
    _apply(path, _owners(), inherit=path.is_dir())


def secure_directory(path: Path) -> None:
    """Create ``path`` if needed and give it the owner-only list."""
    path.mkdir(parents=True, exist_ok=True)
    secure_path(path)


def grant_read(path: Path, sid: PySID) -> None:
    """The owner-only list plus read and execute for ``sid`` (a run-as user's script)."""
    _apply(path, _owners() + [
        (sid, ntsecuritycon.FILE_GENERIC_READ | ntsecuritycon.FILE_GENERIC_EXECUTE)],
        inherit=False)
