"""Start a terminal session's shell as another user inside the current console.

    python -I -m agent.windows.launch PASSWORD_STORE USER PROGRAM [ARG ...]

The agent runs this as LocalSystem on a ConPTY (pywinpty cannot start a process with a
user's token). It logs USER on with the password stored for it, starts PROGRAM with that
token (the program inherits this console, hence the pseudo console), waits, and exits with
the program's exit code. The agent's Job Object holds this process and, through it, the
shell and everything the shell starts.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.launch is for Windows"

import subprocess
from pathlib import Path
from typing import Any

import pywintypes
import win32api
import win32con
import win32process

from agent.passwords import PasswordStore
from agent.process import TaskError
from agent.windows import common
from agent.windows.acl import secure_path
from agent.windows.dpapi import protect, unprotect
from agent.windows.logon import open_account
from agent.windows.tasks import wait_exit


def _console_event(event: int) -> bool:
    """Ctrl-C and Ctrl-Break are for the shell; the launcher stays to report its exit."""
    return event in (win32con.CTRL_C_EVENT, win32con.CTRL_BREAK_EVENT)


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: python -m agent.windows.launch PASSWORD_STORE USER PROGRAM [ARG ...]",
              file=sys.stderr)
        return 2
    store_path, user, command = Path(argv[0]), argv[1], argv[2:]
    win32api.SetConsoleCtrlHandler(_console_event, True)
    store = PasswordStore(store_path, protect, unprotect, secure=secure_path)
    try:
        account = open_account(user, store)
    except TaskError as exc:
        print(f"porthole: {exc} ({exc.code})", file=sys.stderr)
        return 1
    create: Any = win32process.CreateProcessAsUser
    try:
        process, thread, _pid, _tid = create(
            account.token, None, subprocess.list2cmdline(command), None, None, True,
            win32process.CREATE_UNICODE_ENVIRONMENT, account.environment, account.home,
            win32process.STARTUPINFO())
        win32api.CloseHandle(thread)
        try:
            return wait_exit(process)
        finally:
            win32api.CloseHandle(process)
    except pywintypes.error as exc:
        print(f"porthole: cannot start {command[0]} as {user}: {exc.strerror}",
              file=sys.stderr)
        return 1
    finally:
        account.close()


if __name__ == "__main__":
    sys.exit(common.signed_exit_code(main(sys.argv[1:])))
