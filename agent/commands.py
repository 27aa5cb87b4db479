"""Tasks from the server: run scripts and write files as local users, spool every result
to disk and send it until the server acknowledges it (Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import pwd
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.spool import Spool
from agent.users import RunAsError, run_as
from proto.commands import (
    MAX_TASK_OUTPUT,
    OUTPUT_CHUNK,
    AgentBoot,
    FileSend,
    TaskOutput,
    TaskOutputRequest,
    TaskResult,
    TaskResultAck,
    TaskRun,
    TaskStop,
    is_task_id,
)

log = logging.getLogger("porthole.agent.commands")

DRAIN_AFTER_EXIT = 1.0
"""Seconds to keep reading output after the script exits (a background child may hold it)."""
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_ENV = "PORTHOLE_AGENT_BOOT_ID"
"""Overrides the kernel's boot id, for containers that share their host's kernel."""
ENV_PREFIX = "PORTHOLE_"
"""The only variables a task's environment may receive from the server."""


def boot_id() -> str:
    if os.environ.get(BOOT_ID_ENV):
        return os.environ[BOOT_ID_ENV][:64]
    try:
        return Path(BOOT_ID_FILE).read_text().strip()[:64]
    except OSError:
        return ""


def _result(status: str, error_code: str = "", error_info: str = "",
            exit_code: int | None = None, dropped: int = 0,
            started_at: float = 0.0) -> dict[str, Any]:
    now = time.time()
    return {"status": status, "exit_code": exit_code, "error_code": error_code,
            "error_info": error_info[:4000], "dropped": dropped,
            "started_at": started_at or now, "finished_at": now}


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


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


def kill_tree(leader: int) -> int:
    """SIGKILL every process of the task: its session and process group (job control makes
    new groups inside the session) and every descendant (setsid leaves the session, not the
    tree). Returns how many processes were signalled."""
    killed = 0
    for _ in range(5):
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


# --- scripts -------------------------------------------------------------------------------


class _Running:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.stopped = False


async def run_script(msg: TaskRun, config: AgentConfig, spool: Spool,
                     state: _Running) -> dict[str, Any]:
    if not config.allows(msg.username):
        return _result("Failed", "RunAsNotAllowed",
                       f"this agent's allowed_users does not include {msg.username!r}")
    if msg.command_type != "RunShellScript":
        return _result("Failed", "UnsupportedCommandType",
                       f"{msg.command_type} does not run on this platform")
    try:
        user = run_as(msg.username)
    except RunAsError as exc:
        return _result("Failed", exc.code, str(exc))
    cwd = msg.working_dir or user.home
    if not os.path.isdir(cwd):
        return _result("Failed", "WorkingDirNotExist", f"{cwd} does not exist")
    env = user.env(**{k: v for k, v in msg.env.items()
                      if k.startswith(ENV_PREFIX) and "=" not in k and "\0" not in v})
    # Without an identity change CPython can start the child with vfork, which costs the
    # same however large the agent's memory is; with one it must fork.
    same = user.user.pw_uid == os.geteuid() and user.user.pw_gid == os.getegid()
    started = time.time()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", msg.script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=env,
            **({} if same else user.popen),  # type: ignore[arg-type]
        )
    except OSError as exc:
        return _result("Failed", "ProcessCreateFailed", str(exc), started_at=started)
    state.pid = proc.pid
    spool.update(msg.task_id, pid=proc.pid, start_time=start_time(proc.pid))
    if state.stopped:  # a stop that arrived while the process was starting
        kill_tree(proc.pid)
    dropped = 0

    async def read() -> None:
        nonlocal dropped
        assert proc.stdout is not None
        with open(spool.output_path(msg.task_id), "ab") as out:
            written = out.tell()
            while chunk := await proc.stdout.read(65536):
                room = max(0, MAX_TASK_OUTPUT - written)
                out.write(chunk[:room])
                out.flush()
                written += min(room, len(chunk))
                dropped += max(0, len(chunk) - room)

    reader = asyncio.create_task(read())
    timed_out = False
    try:
        await asyncio.wait_for(proc.wait(), msg.timeout)
    except TimeoutError:
        timed_out = True
        kill_tree(proc.pid)
        await proc.wait()
    except asyncio.CancelledError:
        kill_tree(proc.pid)
        raise
    if state.stopped or timed_out:
        kill_tree(proc.pid)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), DRAIN_AFTER_EXIT)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    code = _exit_status(proc.returncode if proc.returncode is not None else -9)
    if state.stopped:
        return _result("Terminated", "", "stopped by StopInvocation; its processes were ended",
                       code, dropped, started)
    if timed_out:
        return _result("Timeout", "ExecutionTimeout",
                       f"killed after the {msg.timeout} s timeout", code, dropped, started)
    if code != 0:
        return _result("Failed", "ExitCodeNonzero", f"exit code {code}", code, dropped,
                       started)
    return _result("Success", "", "", 0, dropped, started)


# --- files ---------------------------------------------------------------------------------


def write_file(msg: FileSend, config: AgentConfig) -> dict[str, Any]:
    """Write the file atomically: a private temporary file, owner and mode set, fsync, then a
    rename (or a hard link, which refuses to replace an existing file without Overwrite)."""
    if not config.allows(msg.owner):
        return _result("Failed", "RunAsNotAllowed",
                       f"this agent's allowed_users does not include {msg.owner!r}")
    try:
        user = pwd.getpwnam(msg.owner)
    except KeyError:
        return _result("Failed", "UserNotExist", f"user {msg.owner!r} does not exist")
    try:
        gid = grp.getgrnam(msg.group).gr_gid if msg.group else user.pw_gid
    except KeyError:
        return _result("Failed", "GroupNotExist", f"group {msg.group!r} does not exist")
    if "/" in msg.name or msg.name in ("", ".", "..") or not msg.target_dir.startswith("/"):
        return _result("Failed", "InvalidPath", "the name or directory is not acceptable")
    try:
        mode = int(msg.mode, 8)
    except ValueError:
        return _result("Failed", "InvalidFileMode", f"{msg.mode!r} is not an octal mode")
    target = Path(msg.target_dir) / msg.name
    try:
        os.makedirs(msg.target_dir, mode=0o755, exist_ok=True)
        if target.is_symlink() or target.exists():
            if not msg.overwrite:
                return _result("Failed", "FileAlreadyExists",
                               f"{target} exists and Overwrite is false")
            if target.is_dir() and not target.is_symlink():
                return _result("Failed", "FileIsDirectory", f"{target} is a directory")
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
                    return _result("Failed", "FileAlreadyExists",
                                   f"{target} exists and Overwrite is false")
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        return _result("Failed", "FileWriteFailed", f"cannot write {target}: {exc.strerror}")
    return _result("Success", "", f"wrote {len(msg.content)} bytes to {target}", 0)


# --- the runner ----------------------------------------------------------------------------


class CommandRunner:
    """Runs the server's tasks; each result stays in the spool until the server acks it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.spool = Spool(Path(agent.state.directory) / "spool")
        self.running: dict[str, _Running] = {}
        agent.handlers[TaskRun] = self._on_run
        agent.handlers[FileSend] = self._on_file
        agent.handlers[TaskStop] = self._on_stop
        agent.handlers[TaskOutputRequest] = self._on_output_request
        agent.handlers[TaskResultAck] = self._on_ack
        agent.connect_hooks.append(self._on_connect)
        self._recover()

    def _recover(self) -> None:
        """Tasks that were running when the agent last stopped: end what is left of their
        processes and report them Terminated, with the output they had produced."""
        for task_id, spec in self.spool.unfinished():
            pid = spec.get("pid")
            if isinstance(pid, int) and start_time(pid) == spec.get("start_time"):
                kill_tree(pid)
            log.warning("task %s was running when the agent stopped; reporting it Terminated",
                        task_id)
            self.spool.finish(task_id, _result(
                "Terminated", "ClientRestarted",
                "the agent stopped while the task ran; its processes were ended",
                started_at=spec.get("received_at", 0.0)))

    def _on_connect(self) -> None:
        self.agent.send(AgentBoot(boot_id()))
        for task_id, result in self.spool.results():
            self._send_result(task_id, result)

    def _accept(self, task_id: str) -> bool:
        if not is_task_id(task_id):
            log.warning("ignoring a task with a malformed id %r", task_id[:80])
            return False
        if task_id in self.running or self.spool.knows(task_id):
            return False  # a redelivery: already running, or done and not yet acknowledged
        self.spool.begin(task_id, {"received_at": time.time()})
        self.running[task_id] = _Running()
        return True

    def _on_run(self, message: TaskRun) -> None:
        if self._accept(message.task_id):
            asyncio.create_task(self._run(message))

    def _on_file(self, message: FileSend) -> None:
        if self._accept(message.task_id):
            asyncio.create_task(self._write(message))

    async def _run(self, message: TaskRun) -> None:
        log.info("running %s as %s (timeout %d s)", message.task_id, message.username,
                 message.timeout)
        state = self.running[message.task_id]
        try:
            result = await run_script(message, self.agent.config, self.spool, state)
        except Exception as exc:  # report, never lose the task in silence
            log.exception("task %s failed to run", message.task_id)
            result = _result("Error", "AgentError", str(exc))
        self._done(message.task_id, result)

    async def _write(self, message: FileSend) -> None:
        try:
            result = await asyncio.to_thread(write_file, message, self.agent.config)
        except Exception as exc:
            log.exception("file %s failed", message.task_id)
            result = _result("Error", "AgentError", str(exc))
        self._done(message.task_id, result)

    def _done(self, task_id: str, result: dict[str, Any]) -> None:
        self.spool.finish(task_id, result)
        self.running.pop(task_id, None)
        log.info("%s finished: %s exit %s", task_id, result["status"], result["exit_code"])
        self._send_result(task_id, result)

    def _send_result(self, task_id: str, result: dict[str, Any]) -> None:
        self.agent.send(TaskResult(
            task_id, result["status"], result["exit_code"], result["error_code"],
            result["error_info"], self.spool.read_output(task_id, 0, OUTPUT_CHUNK),
            self.spool.output_size(task_id), result["dropped"], result["started_at"],
            result["finished_at"]))

    def _on_stop(self, message: TaskStop) -> None:
        if not is_task_id(message.task_id):
            return
        state = self.running.get(message.task_id)
        if state is not None:
            state.stopped = True
            if state.pid is not None:
                kill_tree(state.pid)
            return  # its result (Terminated) follows when the process is gone
        result = self.spool.result(message.task_id)
        if result is None:  # never received (or lost before it began): it did not run here
            result = _result("Cancelled", "", "the task had not started on this instance")
            self.spool.finish(message.task_id, result)
        self._send_result(message.task_id, result)

    def _on_output_request(self, message: TaskOutputRequest) -> None:
        if is_task_id(message.task_id) and self.spool.result(message.task_id) is not None:
            self.agent.send(TaskOutput(message.task_id, message.offset, self.spool.read_output(
                message.task_id, message.offset, OUTPUT_CHUNK)))

    def _on_ack(self, message: TaskResultAck) -> None:
        if is_task_id(message.task_id) and message.task_id not in self.running:
            self.spool.forget(message.task_id)
