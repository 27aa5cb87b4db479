"""Run a script as a local user and capture its merged output (Linux)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from agent.config import AgentConfig
from agent.users import RunAsError, run_as
from proto.messages import MAX_RESULT_OUTPUT, CommandResult, CommandResultAck, CommandRun

log = logging.getLogger("porthole.agent.commands")

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


async def run_script(msg: CommandRun, config: AgentConfig) -> CommandResult:
    if not config.allows(msg.username):
        return _result(msg, "Failed", "RunAsNotAllowed",
                       f"this agent's allowed_users does not include {msg.username!r}")
    if msg.command_type != "RunShellScript":
        return _result(msg, "Failed", "UnsupportedCommandType",
                       f"{msg.command_type} does not run on this platform")
    try:
        user = run_as(msg.username)
    except RunAsError as exc:
        return _result(msg, "Failed", exc.code, str(exc))
    cwd = msg.working_dir or user.home
    if not os.path.isdir(cwd):
        return _result(msg, "Failed", "WorkingDirNotExist", f"{cwd} does not exist")
    started = time.time()
    try:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", msg.script, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True, cwd=cwd, env=user.env(), **user.popen,  # type: ignore[arg-type]
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


class CommandRunner:
    """Runs the server's commands and keeps each result until the server acknowledges it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.unacked: dict[str, CommandResult] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        agent.handlers[CommandRun] = self._on_run
        agent.handlers[CommandResultAck] = self._on_ack
        agent.connect_hooks.append(self._resend)

    def _on_run(self, message: CommandRun) -> None:
        if message.invocation_id in self.running or message.invocation_id in self.unacked:
            return  # already running or done: a redelivery
        self.running[message.invocation_id] = asyncio.create_task(self._run(message))

    def _on_ack(self, message: CommandResultAck) -> None:
        self.unacked.pop(message.invocation_id, None)

    def _resend(self) -> None:
        for result in list(self.unacked.values()):
            self.agent.send(result)

    async def _run(self, message: CommandRun) -> None:
        log.info("running %s as %s (timeout %d s)", message.invocation_id, message.username,
                 message.timeout)
        try:
            result = await run_script(message, self.agent.config)
        except Exception as exc:  # report, never lose the invocation in silence
            log.exception("command %s failed to run", message.invocation_id)
            result = CommandResult(message.invocation_id, "Error", None, "AgentError", str(exc),
                                   b"", 0, time.time(), time.time())
        finally:
            self.running.pop(message.invocation_id, None)
        self.unacked[message.invocation_id] = result
        log.info("%s finished: %s exit %s", message.invocation_id, result.status,
                 result.exit_code)
        self.agent.send(result)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
