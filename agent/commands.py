"""Tasks from the server: run scripts and write files as local users, spool every result
to disk and send it until the server acknowledges it. What differs between Linux and
Windows (starting a script as a user, its process tree, the boot id) is in
``agent.posix_tasks`` and ``agent.windows.tasks``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.config import AgentConfig
from agent.process import TaskError, TaskProcess
from agent.spool import Spool
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

if sys.platform == "win32":
    from agent.windows import tasks as host
else:
    from agent import posix_tasks as host

log = logging.getLogger("porthole.agent.commands")

DRAIN_AFTER_EXIT = 1.0
"""Seconds to keep reading output after the script exits (a background child may hold it)."""
BOOT_ID_ENV = "PORTHOLE_AGENT_BOOT_ID"
"""Overrides the host's boot id, for containers that share their host's kernel."""


def boot_id() -> str:
    if os.environ.get(BOOT_ID_ENV):
        return os.environ[BOOT_ID_ENV][:64]
    return host.boot_id()


def _result(status: str, error_code: str = "", error_info: str = "",
            exit_code: int | None = None, dropped: int = 0,
            started_at: float = 0.0) -> dict[str, Any]:
    now = time.time()
    return {"status": status, "exit_code": exit_code, "error_code": error_code,
            "error_info": error_info[:4000], "dropped": dropped,
            "started_at": started_at or now, "finished_at": now}


# --- scripts -------------------------------------------------------------------------------


class _Running:
    def __init__(self) -> None:
        self.proc: TaskProcess | None = None
        self.stopped = False


async def run_script(msg: TaskRun, config: AgentConfig, spool: Spool,
                     state: _Running) -> dict[str, Any]:
    if not config.allows(msg.username):
        return _result("Failed", "RunAsNotAllowed",
                       f"this agent's allowed_users does not include {msg.username!r}")
    started = time.time()
    try:
        proc = await host.start(msg, config)
    except TaskError as exc:
        return _result("Failed", exc.code, str(exc), started_at=started)
    try:
        return await _supervise(msg, proc, spool, state, started)
    except BaseException:  # cancelled, or the spool failed: nothing may run on unwatched
        proc.kill_tree()
        raise
    finally:
        proc.close()


async def _supervise(msg: TaskRun, proc: TaskProcess, spool: Spool, state: _Running,
                     started: float) -> dict[str, Any]:
    state.proc = proc
    try:
        spool.update(msg.task_id, pid=proc.pid, start_time=proc.start_time)
    except OSError as exc:  # only an agent restart needs it, to end what is left
        log.warning("cannot record the process of %s in the spool: %s", msg.task_id, exc)
    if state.stopped:  # a stop that arrived while the process was starting
        proc.kill_tree()
    dropped = 0

    async def read() -> None:
        nonlocal dropped
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
        code = await asyncio.wait_for(proc.wait(), msg.timeout)
    except TimeoutError:
        timed_out = True
        proc.kill_tree()
        code = await proc.wait()
    if state.stopped or timed_out:
        proc.kill_tree()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(reader), DRAIN_AFTER_EXIT)
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
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
    if not config.allows(msg.owner):
        return _result("Failed", "RunAsNotAllowed",
                       f"this agent's allowed_users does not include {msg.owner!r}")
    try:
        done = host.write_file(msg)
    except TaskError as exc:
        return _result("Failed", exc.code, str(exc))
    return _result("Success", "", done, 0)


# --- the runner ----------------------------------------------------------------------------


class CommandRunner:
    """Runs the server's tasks; each result stays in the spool until the server acks it."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.spool = Spool(Path(agent.state.directory) / "spool")
        self.running: dict[str, _Running] = {}
        self._syncing: dict[str, bool] = {}
        """Results being synced to disk -> whether the server acked them meanwhile (their
        files are forgotten once the sync is done: Windows cannot delete an open file)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._unspooled: dict[str, dict[str, Any]] = {}
        """Results the spool could not record (a full or read-only disk): kept in memory and
        sent on every connection until acknowledged, as long as the agent runs."""
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
            host.end_leftovers(spec)
            log.warning("task %s was running when the agent stopped; reporting it Terminated",
                        task_id)
            self.spool.finish(task_id, _result(
                "Terminated", "ClientRestarted",
                "the agent stopped while the task ran; its processes were ended",
                started_at=spec.get("received_at", 0.0)))

    def _on_connect(self) -> None:
        self.agent.send(AgentBoot(boot_id()))
        for task_id, result in [*self.spool.results(), *self._unspooled.items()]:
            self._send_result(task_id, result)

    def _result_of(self, task_id: str) -> dict[str, Any] | None:
        return self._unspooled.get(task_id) or self.spool.result(task_id)

    def _accept(self, task_id: str) -> bool:
        if not is_task_id(task_id):
            log.warning("ignoring a task with a malformed id %r", task_id[:80])
            return False
        if task_id in self.running or task_id in self._unspooled or \
                self.spool.knows(task_id):
            return False  # a redelivery: already running, or done and not yet acknowledged
        self.running[task_id] = _Running()  # the spool's record follows, before it starts
        return True

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    def _on_run(self, message: TaskRun) -> None:
        if self._accept(message.task_id):
            self._spawn(self._run(message))

    def _on_file(self, message: FileSend) -> None:
        if self._accept(message.task_id):
            self._spawn(self._write(message))

    async def _run(self, message: TaskRun) -> None:
        log.info("running %s as %s (timeout %d s)", message.task_id, message.username,
                 message.timeout)
        await self._perform(message.task_id, lambda state: run_script(
            message, self.agent.config, self.spool, state))

    async def _write(self, message: FileSend) -> None:
        await self._perform(message.task_id, lambda _state: asyncio.to_thread(
            write_file, message, self.agent.config))

    async def _perform(self, task_id: str,
                       start: Callable[[_Running], Awaitable[dict[str, Any]]]) -> None:
        """Record the task on disk before it starts (after a crash the agent reports it
        Terminated instead of running it again), start it unless it was stopped meanwhile,
        and report its result."""
        state = self.running[task_id]
        try:
            await asyncio.to_thread(self.spool.begin, task_id, {"received_at": time.time()})
            if state.stopped:
                result = _result("Cancelled", "", "stopped before it started on this instance")
            else:
                result = await start(state)
        except Exception as exc:  # report, never lose the task in silence
            log.exception("task %s failed", task_id)
            result = _result("Error", "AgentError", str(exc))
        await self._done(task_id, result)

    async def _done(self, task_id: str, result: dict[str, Any]) -> None:
        self._record(task_id, result)
        await self._sync(task_id)

    def _record(self, task_id: str, result: dict[str, Any]) -> None:
        """Record the result and send it; :meth:`_sync` then waits for the disk (see
        agent.spool). A spool that cannot be written still lets the result go out."""
        self._syncing[task_id] = False
        try:
            self.spool.finish(task_id, result, durable=False)
        except OSError as exc:
            log.error("cannot record the result of %s in the spool (kept in memory until "
                      "the server has it): %s", task_id, exc)
            self._unspooled[task_id] = result
        self.running.pop(task_id, None)
        log.info("%s finished: %s exit %s", task_id, result["status"], result["exit_code"])
        self._send_result(task_id, result)

    async def _sync(self, task_id: str) -> None:
        try:
            await asyncio.to_thread(self.spool.sync, task_id)
        except OSError as exc:
            log.error("cannot sync the result of %s to disk: %s", task_id, exc)
        finally:
            if self._syncing.pop(task_id, False):
                self.spool.forget(task_id)

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
            if state.proc is not None:
                state.proc.kill_tree()
            return  # its result follows once it has ended
        result = self._result_of(message.task_id)
        if result is None:  # never received (or lost before it began): it did not run here
            result = _result("Cancelled", "", "the task had not started on this instance")
            self._record(message.task_id, result)
            self._spawn(self._sync(message.task_id))
        else:
            self._send_result(message.task_id, result)

    def _on_output_request(self, message: TaskOutputRequest) -> None:
        if is_task_id(message.task_id) and self._result_of(message.task_id) is not None:
            self.agent.send(TaskOutput(message.task_id, message.offset, self.spool.read_output(
                message.task_id, message.offset, OUTPUT_CHUNK)))

    def _on_ack(self, message: TaskResultAck) -> None:
        if not is_task_id(message.task_id) or message.task_id in self.running:
            return
        self._unspooled.pop(message.task_id, None)
        if message.task_id in self._syncing:
            self._syncing[message.task_id] = True  # forgotten once its sync is done
        else:
            self.spool.forget(message.task_id)
