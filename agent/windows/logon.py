"""Run-as on Windows: a logon token for a local or domain user, from the password the
instance's administrator stored under that user's name (``porthole-agent password set``);
and the unprivileged session user, which the agent creates with a random password of its
own. Run-as names meaning LocalSystem (``root``, ``System``) need no logon."""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.logon is for Windows"

import os
import secrets
from dataclasses import dataclass
from typing import Any, cast

import pywintypes
import win32api
import win32con
import win32net
import win32netcon
import win32profile
import win32security
import winerror
from _win32typing import PyHKEY, PySID

from agent.passwords import PasswordStore, PasswordStoreError
from agent.process import TaskError
from agent.windows import common
from agent.windows.common import is_system_account, split_account

SESSION_USER_COMMENT = "Porthole session user"
"""Marks the account the agent created: only its password may the agent reset."""
ADMINISTRATORS = "S-1-5-32-544"
NERR_USER_NOT_FOUND = 2221
LOCAL_MACHINE: Any = None
"""The ``server`` argument of the Net* functions that means this machine."""


@dataclass
class Account:
    """Who a process runs as: a logon token (None: the agent's own account), the loaded
    profile, the user's environment and profile directory."""

    name: str
    sid: PySID
    token: Any
    profile: PyHKEY | None
    environment: dict[str, str]
    home: str

    def close(self) -> None:
        if self.token is not None:
            if self.profile is not None:
                try:
                    win32profile.UnloadUserProfile(int(self.token), self.profile)
                except pywintypes.error:
                    pass  # still in use by a process that outlived the task
            self.token.Close()
            self.token = None


def own_account() -> Account:
    token = win32security.OpenProcessToken(win32api.GetCurrentProcess(),
                                           win32con.TOKEN_QUERY)
    try:
        sid = win32security.GetTokenInformation(token, win32security.TokenUser)[0]
    finally:
        win32api.CloseHandle(token)
    root = common.system_root(os.environ)
    return Account("System", sid, None, None, dict(os.environ),
                   os.path.join(root, "System32"))


def open_account(name: str, store: PasswordStore) -> Account:
    """Log ``name`` on with its stored password and load its profile (blocking: call it in
    a thread). Raises TaskError with Cloud Assistant's error codes."""
    if is_system_account(name):
        return own_account()
    try:
        sid = win32security.LookupAccountName(None, name)[0]
    except pywintypes.error:
        raise TaskError("UserNotExist", f"user {name!r} does not exist") from None
    try:
        password = store.get(name)
    except PasswordStoreError as exc:
        raise TaskError("PasswordNotReadable", str(exc)) from None
    if password is None:
        raise TaskError("PasswordNotFound",
                        f"no password is stored for {name!r} on this instance; store it there "
                        f"with `porthole-agent password set {name}`")
    user, domain = split_account(name)
    try:
        token = win32security.LogonUser(user, domain, password,
                                        win32security.LOGON32_LOGON_INTERACTIVE,
                                        win32security.LOGON32_PROVIDER_DEFAULT)
    except pywintypes.error as exc:
        raise TaskError("UsernameOrPasswordInvalid",
                        f"cannot log on as {name}: {exc.strerror}") from None
    token = _full_token(token)
    try:
        profile = win32profile.LoadUserProfile(
            int(token), cast(Any, {"UserName": user, "Flags": 1}))  # PI_NOUI
        environment = win32profile.CreateEnvironmentBlock(int(token), False)
        home = environment.get("USERPROFILE") or win32profile.GetUserProfileDirectory(
            int(token))
    except pywintypes.error as exc:
        token.Close()
        raise TaskError("ProfileLoadFailed",
                        f"cannot load the profile of {name}: {exc.strerror}") from None
    return Account(name, sid, token, profile, dict(environment), home)


def _full_token(token: Any) -> Any:
    """An administrator's interactive logon gives a filtered (UAC) token; a command should
    have the user's full rights, as under LocalSystem. LocalSystem may take the linked one."""
    try:
        linked = win32security.GetTokenInformation(int(token),
                                                   win32security.TokenLinkedToken)
    except pywintypes.error:
        return token  # not an administrator: the token is already the whole one
    token.Close()
    return linked


# --- the session user ------------------------------------------------------------------------


def _new_password() -> str:
    # Random, and meeting the default complexity rule (upper, lower, digit, symbol).
    return secrets.token_urlsafe(30) + "aZ7!"


def ensure_session_user(name: str, administrator: bool, store: PasswordStore) -> None:
    """Create the session user on first use, with a random password kept in the store; put it
    in or take it out of Administrators (``session_user_sudo``)."""
    try:
        info = win32net.NetUserGetInfo(LOCAL_MACHINE, name, 1)
    except pywintypes.error as exc:
        if exc.winerror != NERR_USER_NOT_FOUND:
            raise TaskError("UserLookupFailed", f"cannot look {name} up: {exc.strerror}") \
                from None
        info = None
    try:
        if info is None:
            password = _new_password()
            win32net.NetUserAdd(LOCAL_MACHINE, 1, {
                "name": name, "password": password, "priv": win32netcon.USER_PRIV_USER,
                "comment": SESSION_USER_COMMENT, "home_dir": None, "script_path": None,
                "flags": win32netcon.UF_SCRIPT | win32netcon.UF_DONT_EXPIRE_PASSWD})
            store.set(name, password)
        elif store.get(name) is None:
            if info.get("comment") != SESSION_USER_COMMENT:
                raise TaskError("PasswordNotFound",
                                f"user {name!r} exists, was not created by the agent, and has "
                                f"no stored password; run `porthole-agent password set {name}`")
            password = _new_password()
            win32net.NetUserSetInfo(LOCAL_MACHINE, name, 1003, {"password": password})
            store.set(name, password)
        group = win32security.LookupAccountSid(
            None, win32security.ConvertStringSidToSid(ADMINISTRATORS))[0]
        if administrator:
            try:
                members: Any = [{"domainandname": name}]
                win32net.NetLocalGroupAddMembers(LOCAL_MACHINE, group, 3, members)
            except pywintypes.error as exc:
                if exc.winerror != winerror.ERROR_MEMBER_IN_ALIAS:
                    raise
        else:
            try:
                win32net.NetLocalGroupDelMembers(LOCAL_MACHINE, group, [name])
            except pywintypes.error as exc:
                if exc.winerror != winerror.ERROR_MEMBER_NOT_IN_ALIAS:
                    raise
    except pywintypes.error as exc:
        raise TaskError("UserCreateFailed", f"cannot set up {name}: {exc.strerror}") from None
    except PasswordStoreError as exc:
        raise TaskError("PasswordNotReadable", str(exc)) from None
