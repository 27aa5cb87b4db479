"""Run a script as a local user and capture its merged output (Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
import time

from proto.messages import MAX_RESULT_OUTPUT, CommandResult, CommandRun

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_AFTER_EXIT = 1.0
"""Seconds to keep reading output after the script exits (a background child may hold it)."""


def _result(msg: CommandRun, status: str, error_code: str = "", error_info: str = "",
            exit_code: int | None = None, output: bytes = b"", dropped: int = 0,
            started_at: float = 0.0) -> CommandResult:
    now = time.time()
    return CommandResult(msg.invocation_id, status, exit_code, error_code, error_info, output,
                         dropped, started_at or now, now)


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def run_script(msg: CommandRun) -> CommandResult:
    if msg.command_type != "RunShellScript":
        return _result(msg, "Failed", "UnsupportedCommandType",
                       f"{msg.command_type} does not run on this platform")
    try:
        user = pwd.getpwnam(msg.username)
    except KeyError:
        return _result(msg, "Failed", "UserNotExist", f"user {msg.username!r} does not exist")
    switch = os.geteuid() == 0
    if not switch and user.pw_uid != os.geteuid():
        return _result(msg, "Failed", "RunAsNotPermitted",
                       f"the agent does not run as root and cannot run as {msg.username}")
    cwd = msg.working_dir or user.pw_dir
    if not os.path.isdir(cwd):
        if msg.working_dir:
            return _result(msg, "Failed", "WorkingDirNotExist", f"{cwd} does not exist")
        cwd = "/"
    env = {
        "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
        "SHELL": user.pw_shell or "/bin/sh", "PATH": DEFAULT_PATH,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }
    extra: dict[str, object] = {}
    if switch:
        groups = os.getgrouplist(user.pw_name, user.pw_gid)
        extra = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups}
    started = time.time()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", msg.script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=env, **extra,  # type: ignore[arg-type]
        )
    except OSError as exc:
        return _result(msg, "Failed", "ProcessCreateFailed", str(exc), started_at=started)
    output = bytearray()
    dropped = 0

    async def read() -> None:
        nonlocal dropped
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(65536):
            room = MAX_RESULT_OUTPUT - len(output)
            output.extend(chunk[:room])
            dropped += max(0, len(chunk) - room)

    reader = asyncio.create_task(read())
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), msg.timeout)
    except TimeoutError:
        timed_out = True
        _kill_group(proc.pid)
        await proc.wait()
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        raise
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), DRAIN_AFTER_EXIT)
    reader.cancel()
    code = _exit_status(proc.returncode if proc.returncode is not None else -9)
    if timed_out:
        return _result(msg, "Timeout", "ExecutionTimeout",
                       f"killed after the {msg.timeout} s timeout", code, bytes(output),
                       dropped, started)
    if code != 0:
        return _result(msg, "Failed", "ExitCodeNonzero", f"exit code {code}", code,
                       bytes(output), dropped, started)
    return _result(msg, "Success", "", "", 0, bytes(output), dropped, started)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
