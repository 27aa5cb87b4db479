"""Tasks on Windows: RunPowerShellScript and RunBatScript from a script file, as LocalSystem
or as a user logged on with a stored password, each task's processes in a Job Object.

The job ends the whole tree on StopInvocation and timeouts. While the task runs it also has
KILL_ON_JOB_CLOSE, so processes die with the agent (the next agent reports the task
Terminated, as on Linux); once the script has exited that flag is cleared before the job is
closed, so background processes the script started keep running, as on Linux.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.tasks is for Windows"

import asyncio
import contextlib
import logging
import os
import uuid
from asyncio import windows_utils
from pathlib import Path
from typing import Any

import pywintypes
import win32api
import win32con
import win32event
import win32file
import win32job
import win32process
import win32security
import winnt

from agent.config import AgentConfig
from agent.process import TaskError, task_variables
from agent.windows import common
from agent.windows.acl import grant_read, secure_directory
from agent.windows.dpapi import password_store
from agent.windows.logon import Account, open_account
from proto.commands import FileSend, TaskRun

log = logging.getLogger("porthole.agent.commands")

BOOT_KEY = r"SOFTWARE\Porthole"
STILL_ACTIVE = 259
READ_LIMIT = 64 * 1024


def state_dir(config: AgentConfig) -> Path:
    return config.state_dir or Path(common.default_state_dir(os.environ))


# --- host facts ------------------------------------------------------------------------------


def boot_id() -> str:
    """An id that changes at each boot: kept in a volatile registry key, which Windows
    drops at shutdown (Windows has no boot id of its own)."""
    try:
        machine: Any = win32con.HKEY_LOCAL_MACHINE
        parent, _ = win32api.RegCreateKeyEx(machine, BOOT_KEY, win32con.KEY_ALL_ACCESS)
        try:
            key, _ = win32api.RegCreateKeyEx(parent, "Boot", win32con.KEY_ALL_ACCESS, None,
                                             winnt.REG_OPTION_VOLATILE)
        finally:
            parent.Close()
        try:
            value, _kind = win32api.RegQueryValueEx(key, "Id")
        except pywintypes.error:
            value = uuid.uuid4().hex
            win32api.RegSetValueEx(key, "Id", 0, win32con.REG_SZ, value)
        finally:
            key.Close()
    except pywintypes.error as exc:
        log.warning("cannot keep a boot id in the registry: %s", exc.strerror)
        return ""
    return str(value)[:64]


def pid_alive(pid: int) -> bool:
    try:
        handle = win32api.OpenProcess(win32con.PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    except pywintypes.error as exc:
        return exc.winerror == 5  # access denied: it exists
    try:
        return bool(win32process.GetExitCodeProcess(handle) == STILL_ACTIVE)
    finally:
        win32api.CloseHandle(handle)


def end_leftovers(spec: dict[str, object]) -> None:
    """Nothing is left: the task's job had KILL_ON_JOB_CLOSE, and the job closed with the
    agent process that held it."""


def write_file(msg: FileSend) -> str:
    raise TaskError("UnsupportedPlatform",
                    "SendFile is not supported by Windows agents yet")


# --- jobs and processes ------------------------------------------------------------------------


def new_job(kill_on_close: bool = True) -> Any:
    create: Any = win32job.CreateJobObject  # returns the job's handle
    job = create(None, "")
    set_kill_on_close(job, kill_on_close)
    return job


def set_kill_on_close(job: Any, on: bool) -> None:
    info = win32job.QueryInformationJobObject(job, win32job.JobObjectExtendedLimitInformation)
    flags = info["BasicLimitInformation"]["LimitFlags"]
    if on:
        flags |= win32job.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    else:
        flags &= ~win32job.JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
    info["BasicLimitInformation"]["LimitFlags"] = flags
    win32job.SetInformationJobObject(job, win32job.JobObjectExtendedLimitInformation, info)


def _inheritable(handle: int) -> Any:
    process = win32api.GetCurrentProcess()
    return win32api.DuplicateHandle(process, handle, process, 0, True,
                                    win32con.DUPLICATE_SAME_ACCESS)


def spawn(command_line: str, account: Account, environment: dict[str, str], cwd: str,
          job: Any) -> tuple[Any, int, int]:
    """Start ``command_line`` suspended, put it in ``job``, then let it run; its stdout and
    stderr go to one overlapped pipe. Returns (process handle, pid, read end of the pipe).

    Call it on the event loop's thread and nowhere else at the same time: the write end is
    inheritable only while CreateProcess runs, so no other child inherits it."""
    read_end, write_end = windows_utils.pipe(overlapped=(True, False), duplex=False)
    child_out = _inheritable(write_end)
    win32api.CloseHandle(write_end)
    attributes = win32security.SECURITY_ATTRIBUTES()
    attributes.bInheritHandle = True
    null = win32file.CreateFile("NUL", win32file.GENERIC_READ,
                                win32file.FILE_SHARE_READ | win32file.FILE_SHARE_WRITE,
                                attributes, win32file.OPEN_EXISTING, 0, None)
    startup = win32process.STARTUPINFO()
    startup.dwFlags = win32process.STARTF_USESTDHANDLES
    startup.hStdInput = int(null)
    startup.hStdOutput = int(child_out)
    startup.hStdError = int(child_out)
    flags = (win32process.CREATE_SUSPENDED | win32process.CREATE_NO_WINDOW
             | win32process.CREATE_UNICODE_ENVIRONMENT)
    create: Any = win32process.CreateProcessAsUser
    try:
        if account.token is None:
            process, thread, pid, _tid = win32process.CreateProcess(
                None, command_line, None, None, True, flags, environment, cwd, startup)
        else:
            process, thread, pid, _tid = create(
                account.token, None, command_line, None, None, True, flags, environment, cwd,
                startup)
    except pywintypes.error as exc:
        win32api.CloseHandle(read_end)
        raise TaskError("ProcessCreateFailed", f"cannot start the script: {exc.strerror}") \
            from None
    finally:
        win32api.CloseHandle(int(child_out))
        null.Close()
    try:
        win32job.AssignProcessToJobObject(job, process)
    except pywintypes.error as exc:
        win32process.TerminateProcess(process, common.KILLED_EXIT_CODE)
        win32api.CloseHandle(thread)
        win32api.CloseHandle(process)
        win32api.CloseHandle(read_end)
        raise TaskError("ProcessCreateFailed",
                        f"cannot put the script in a job: {exc.strerror}") from None
    win32process.ResumeThread(thread)
    win32api.CloseHandle(thread)
    return process, int(pid), read_end


def wait_exit(process: Any) -> int:
    """Block until the process ends; its exit code (run it in a thread)."""
    win32event.WaitForSingleObject(process, win32event.INFINITE)
    return common.signed_exit_code(win32process.GetExitCodeProcess(process))


# --- scripts -----------------------------------------------------------------------------------


class WindowsTask:
    """A script run in its own job; stdout and stderr read through the proactor."""

    def __init__(self, process: Any, pid: int, job: Any, account: Account, script: Path,
                 stdout: asyncio.StreamReader, transport: asyncio.BaseTransport) -> None:
        self.process = process
        self.pid = pid
        self.start_time = -1
        self.job = job
        self.account = account
        self.script = script
        self.stdout = stdout
        self.transport = transport
        self._exit: int | None = None

    async def wait(self) -> int:
        if self._exit is None:
            self._exit = await asyncio.to_thread(wait_exit, self.process)
        return self._exit

    def kill_tree(self) -> None:
        with contextlib.suppress(pywintypes.error):
            win32job.TerminateJobObject(self.job, common.KILLED_EXIT_CODE)

    def close(self) -> None:
        with contextlib.suppress(pywintypes.error):
            set_kill_on_close(self.job, False)  # what the script left running stays
        win32api.CloseHandle(self.job)
        win32api.CloseHandle(self.process)
        self.transport.close()
        self.account.close()
        with contextlib.suppress(OSError):
            self.script.unlink()


async def start(msg: TaskRun, config: AgentConfig) -> WindowsTask:
    suffix = common.SCRIPT_SUFFIXES.get(msg.command_type)
    if suffix is None:
        raise TaskError("UnsupportedCommandType",
                        f"{msg.command_type} does not run on Windows; use "
                        "RunPowerShellScript or RunBatScript")
    directory = state_dir(config)
    account = await asyncio.to_thread(open_account, msg.username, password_store(directory))
    try:
        return await _start(msg, account, directory / "scripts", suffix)
    except BaseException:
        account.close()
        raise


async def _start(msg: TaskRun, account: Account, scripts: Path, suffix: str) -> WindowsTask:
    cwd = msg.working_dir or account.home
    if not os.path.isdir(cwd):
        raise TaskError("WorkingDirNotExist", f"{cwd} does not exist")
    system_root = common.system_root(os.environ)
    script = scripts / f"{msg.task_id}{suffix}"
    try:
        secure_directory(scripts)
        script.write_bytes(common.script_bytes(msg.command_type, msg.script, "oem"))
        grant_read(script, account.sid)
    except (OSError, pywintypes.error) as exc:
        raise TaskError("ScriptWriteFailed", f"cannot write {script}: {exc}") from None
    environment = common.environment_block(account.environment, task_variables(msg.env))
    job = new_job()
    try:
        process, pid, read_end = spawn(
            common.script_command_line(msg.command_type, str(script), system_root),
            account, environment, cwd, job)
    except BaseException:
        win32api.CloseHandle(job)
        with contextlib.suppress(OSError):
            script.unlink()
        raise
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), windows_utils.PipeHandle(read_end))
    return WindowsTask(process, pid, job, account, script, reader, transport)
