"""Tasks on Linux: ``/bin/sh -c`` as a local user in a session of its own, process trees
found through /proc, files written with their owner and mode."""

from __future__ import annotations

import sys

assert sys.platform != "win32", "agent.posix_tasks is for POSIX systems"

import asyncio
import contextlib
import grp
import os
import pwd
import secrets
import signal
from pathlib import Path

from agent.config import AgentConfig
from agent.process import TaskError, task_variables
from agent.users import RunAsError, run_as
from proto.commands import FileSend, TaskRun

BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
COMMAND_TYPES = ("RunShellScript",)


def boot_id() -> str:
    try:
        return Path(BOOT_ID_FILE).read_text().strip()[:64]
    except OSError:
        return ""


# --- process trees -------------------------------------------------------------------------


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ..."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> int:
    """The process's start time in clock ticks since boot (tells a reused pid apart)."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else -1


def recycled(leader: int, started: int) -> bool:
    """True when the pid of a leader that started at ``started`` now names another process.
    The kernel reuses no pid that is still some process's session or group id, so then the
    leader's session and group are empty, and that number now stands for someone else's."""
    now = start_time(leader)
    return -1 not in (now, started) and now != started


def session_processes(sid: int) -> list[int]:
    """Every process in the session ``sid``."""
    return [int(name) for name in os.listdir("/proc")
            if name.isdigit() and (fields := _proc_stat(int(name))) and int(fields[3]) == sid]


def kill_tree(leader: int, started: int) -> int:
    """SIGKILL every process of the task: its session and process group (job control makes
    new groups inside the session) and every descendant (setsid leaves the session, not the
    tree). Nothing once the leader's pid is :func:`recycled`. Returns how many processes
    were signalled."""
    killed = 0
    for _ in range(5):
        if recycled(leader, started):
            break
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and (fields := _proc_stat(int(name))) is not None:
                stats[int(name)] = fields
        children: dict[int, list[int]] = {}
        for pid, fields in stats.items():
            children.setdefault(int(fields[1]), []).append(pid)
        doomed = {pid for pid, f in stats.items()
                  if leader in (int(f[2]), int(f[3])) and f[0] != "Z"}
        if leader in stats:
            doomed.add(leader)
        queue = list(doomed)
        while queue:
            for child in children.get(queue.pop(), []):
                if child not in doomed:
                    doomed.add(child)
                    queue.append(child)
        doomed = {p for p in doomed if stats[p][0] != "Z" and p != os.getpid()}
        if not doomed:
            break
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def end_leftovers(spec: dict[str, object]) -> None:
    """After an agent restart: end what is left of a task that was running."""
    pid = spec.get("pid")
    started = spec.get("start_time")
    if isinstance(pid, int) and isinstance(started, int) and start_time(pid) == started:
        kill_tree(pid, started)


# --- scripts -------------------------------------------------------------------------------


class ShellTask:
    """``/bin/sh -c SCRIPT`` in a new session (its tree is found by session id)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.start_time = start_time(proc.pid)
        assert proc.stdout is not None
        self.stdout: asyncio.StreamReader = proc.stdout

    async def wait(self) -> int:
        code = await self.proc.wait()
        return 128 - code if code < 0 else code

    def kill_tree(self) -> None:
        kill_tree(self.pid, self.start_time)

    def close(self) -> None:
        """Nothing to release: the pipes close with the process."""


async def start(msg: TaskRun, config: AgentConfig) -> ShellTask:
    if msg.command_type not in COMMAND_TYPES:
        raise TaskError("UnsupportedCommandType",
                        f"{msg.command_type} does not run on this platform")
    try:
        user = run_as(msg.username)
    except RunAsError as exc:
        raise TaskError(exc.code, str(exc)) from None
    cwd = msg.working_dir or user.home
    if not os.path.isdir(cwd):
        raise TaskError("WorkingDirNotExist", f"{cwd} does not exist")
    env = user.env(**task_variables(msg.env))
    # Without an identity change CPython can start the child with vfork, which costs the
    # same however large the agent's memory is; with one it must fork.
    same = user.user.pw_uid == os.geteuid() and user.user.pw_gid == os.getegid()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", msg.script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=env,
            **({} if same else user.popen),  # type: ignore[arg-type]
        )
    except OSError as exc:
        raise TaskError("ProcessCreateFailed", str(exc)) from None
    return ShellTask(proc)


# --- files ---------------------------------------------------------------------------------


def write_file(msg: FileSend) -> str:
    """Write the file atomically: a private temporary file, owner and mode set, fsync, then a
    rename (or a hard link, which refuses to replace an existing file without Overwrite).
    Returns what was done; raises TaskError."""
    try:
        user = pwd.getpwnam(msg.owner)
    except KeyError:
        raise TaskError("UserNotExist", f"user {msg.owner!r} does not exist") from None
    try:
        gid = grp.getgrnam(msg.group).gr_gid if msg.group else user.pw_gid
    except KeyError:
        raise TaskError("GroupNotExist", f"group {msg.group!r} does not exist") from None
    if "/" in msg.name or msg.name in ("", ".", "..") or not msg.target_dir.startswith("/"):
        raise TaskError("InvalidPath", "the name or directory is not acceptable")
    try:
        mode = int(msg.mode, 8)
    except ValueError:
        raise TaskError("InvalidFileMode", f"{msg.mode!r} is not an octal mode") from None
    target = Path(msg.target_dir) / msg.name
    exists = TaskError("FileAlreadyExists", f"{target} exists and Overwrite is false")
    try:
        os.makedirs(msg.target_dir, mode=0o755, exist_ok=True)
        if target.is_symlink() or target.exists():
            if not msg.overwrite:
                raise exists
            if target.is_dir() and not target.is_symlink():
                raise TaskError("FileIsDirectory", f"{target} is a directory")
        tmp = target.with_name(f".{msg.name[:200]}.porthole-{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(msg.content)
                os.fchown(f.fileno(), user.pw_uid, gid)
                os.fchmod(f.fileno(), mode)
                f.flush()
                os.fsync(f.fileno())
            if msg.overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)
                except FileExistsError:
                    raise exists from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise TaskError("FileWriteFailed", f"cannot write {target}: {exc.strerror}") from None
    return f"wrote {len(msg.content)} bytes to {target}"
