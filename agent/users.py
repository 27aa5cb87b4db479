"""Local users on Linux: resolving run-as users and creating the default session user
(Windows: ``agent.windows.logon``)."""

from __future__ import annotations

import sys

assert sys.platform != "win32", "agent.users is for POSIX systems"

import os
import pwd
import subprocess
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunAsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class RunAs:
    """How to start a process as a user: Popen keyword arguments and a login environment."""

    user: pwd.struct_passwd
    popen: dict[str, object]

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "HOME": self.user.pw_dir, "USER": self.user.pw_name, "LOGNAME": self.user.pw_name,
            "SHELL": self.shell, "PATH": DEFAULT_PATH,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
        }
        env.update(extra)
        return env

    @property
    def shell(self) -> str:
        return self.user.pw_shell if os.path.exists(self.user.pw_shell or "") else "/bin/sh"

    @property
    def home(self) -> str:
        return self.user.pw_dir if os.path.isdir(self.user.pw_dir) else "/"


def run_as(name: str) -> RunAs:
    try:
        user = pwd.getpwnam(name)
    except KeyError:
        raise RunAsError("UserNotExist", f"user {name!r} does not exist") from None
    if os.geteuid() == 0:
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
        return RunAs(user, {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups})
    if user.pw_uid != os.geteuid():
        raise RunAsError("RunAsNotPermitted",
                         f"the agent does not run as root and cannot run as {name}")
    return RunAs(user, {})


def ensure_session_user(name: str, sudo: bool) -> None:
    """Create the unprivileged session user on first use (no password; sudo if configured)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise RunAsError("RunAsNotPermitted",
                             f"user {name!r} does not exist and the agent is not root") from None
        result = subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", "--comment",
             "Porthole session user", name], capture_output=True, text=True)
        if result.returncode != 0 and result.returncode != 9:  # 9: created meanwhile
            raise RunAsError("UserCreateFailed",
                             f"cannot create {name}: {result.stderr.strip()}") from None
    sudoers = f"/etc/sudoers.d/{name}"
    if sudo and os.path.isdir("/etc/sudoers.d") and not os.path.exists(sudoers):
        fd = os.open(sudoers, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o440)
        with os.fdopen(fd, "w") as f:
            f.write(f"{name} ALL=(ALL) NOPASSWD:ALL\n")
    elif not sudo and os.path.exists(sudoers):
        os.unlink(sudoers)
