"""The agent's task spool and runner: what is on disk when, and what a stop, an ack or a
power loss in between leaves behind. Real files and real processes; the connection is a
stand-in that records what the agent sends."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.commands import CommandRunner
from agent.config import AgentConfig
from agent.spool import Spool
from proto.commands import TaskResult, TaskResultAck, TaskRun, TaskStop, task_id
from tests.harness import alive

TASK = task_id("t-" + "ab" * 10, 1)


class Link:
    """What CommandRunner needs of agent.connection.Agent: handlers, hooks and send()."""

    def __init__(self, directory: Path) -> None:
        self.state = SimpleNamespace(directory=directory)
        self.config = AgentConfig()
        self.handlers: dict[type, Any] = {}
        self.connect_hooks: list[Any] = []
        self.sent: list[Any] = []

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def deliver(self, message: Any) -> None:
        self.handlers[type(message)](message)

    def results(self) -> list[TaskResult]:
        return [m for m in self.sent if isinstance(m, TaskResult)]


async def _until(predicate: Any, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_an_unsynced_result_is_whole_after_sync_and_sync_after_forget_is_quiet(tmp_path):
    spool = Spool(tmp_path / "spool")
    spool.begin(TASK, {"received_at": 1.0})
    spool.output_path(TASK).write_bytes(b"out\n")
    spool.finish(TASK, {"status": "Success"}, durable=False)
    assert spool.result(TASK) == {"status": "Success"}
    spool.sync(TASK)
    assert spool.results() == [(TASK, {"status": "Success"})]
    spool.forget(TASK)
    spool.sync(TASK)  # acknowledged and forgotten while the sync was due: nothing to do
    assert not spool.knows(TASK) and list(spool.directory.iterdir()) == []


def test_a_result_left_empty_by_a_power_loss_is_reported_terminated(tmp_path):
    spool = Spool(tmp_path / "agent" / "spool")
    spool.begin(TASK, {"received_at": 1.0})
    (spool.directory / f"{TASK}.result").write_bytes(b"")  # renamed in, data never written
    assert spool.unfinished() == [(TASK, {"received_at": 1.0})]
    assert spool.results() == []
    CommandRunner(Link(tmp_path / "agent"))  # recovers on start, as after the reboot
    result = Spool(spool.directory).result(TASK)
    assert result is not None and result["status"] == "Terminated"
    assert result["error_code"] == "ClientRestarted"


async def test_a_stop_before_the_task_starts_cancels_it_unrun(tmp_path):
    link = Link(tmp_path)
    runner = CommandRunner(link)
    marker = tmp_path / "ran"
    link.deliver(TaskRun(TASK, f"touch {marker}", os.environ.get("USER", "root"), 10))
    link.deliver(TaskStop(TASK))  # the same moment: before its record is on disk
    await _until(lambda: link.results())
    [result] = link.results()
    assert result.status == "Cancelled" and not marker.exists()
    link.deliver(TaskRun(TASK, f"touch {marker}", "root", 10))  # a redelivery is not run
    assert TASK not in runner.running
    await asyncio.sleep(0.2)
    assert not marker.exists() and len(link.results()) == 1


class SlowSpool(Spool):
    """A disk that takes its time to sync (released by the test)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.release = threading.Event()

    def sync(self, task_id: str) -> None:
        assert self.release.wait(20)
        super().sync(task_id)


async def test_the_result_goes_out_before_its_sync_and_an_early_ack_waits_for_it(tmp_path):
    link = Link(tmp_path)
    runner = CommandRunner(link)
    runner.spool = spool = SlowSpool(tmp_path / "spool")
    link.deliver(TaskRun(TASK, "echo done", os.environ.get("USER", "root"), 10))
    await _until(lambda: link.results())  # sent while the disk still syncs
    assert link.results()[0].status == "Success" and link.results()[0].head == b"done\n"
    link.deliver(TaskResultAck(TASK))
    assert spool.result(TASK) is not None  # not deleted while it is held open to sync
    spool.release.set()
    await _until(lambda: not spool.knows(TASK))
    assert list(spool.directory.iterdir()) == []


class FullSpool(Spool):
    """A disk that filled up after the task's record was written."""

    def update(self, task_id: str, **values: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))



async def test_a_task_whose_process_cannot_be_recorded_is_still_timed_and_stopped(tmp_path):
    link = Link(tmp_path)
    runner = CommandRunner(link)
    runner.spool = FullSpool(tmp_path / "spool")
    pidfile = tmp_path / "pid"
    user = os.environ.get("USER", "root")
    link.deliver(TaskRun(TASK, f"echo $$ > {pidfile}; exec sleep 300", user, 1))
    await _until(lambda: link.results())
    assert link.results()[0].status == "Timeout"
    assert not alive(int(pidfile.read_text()))
    other = task_id("t-" + "cd" * 10, 1)
    link.deliver(TaskRun(other, f"echo $$ > {pidfile}; exec sleep 300", user, 60))
    await _until(lambda: pidfile.exists() and alive(int(pidfile.read_text() or 0)))
    link.deliver(TaskStop(other))
    await _until(lambda: len(link.results()) == 2)
    assert link.results()[1].status == "Terminated"
    assert not alive(int(pidfile.read_text()))


async def test_a_result_the_spool_cannot_hold_is_resent_from_memory_until_acked(tmp_path):
    link = Link(tmp_path)
    runner = CommandRunner(link)
    (runner.spool.directory / f"{TASK}.result").mkdir()  # the result file cannot be written
    marker = tmp_path / "runs"
    user = os.environ.get("USER", "root")
    link.deliver(TaskRun(TASK, f"echo x >> {marker}; echo done", user, 10))
    await _until(lambda: link.results())
    assert link.results()[0].status == "Success" and link.results()[0].head == b"done\n"
    for hook in link.connect_hooks:  # the link broke before the server stored it
        hook()
    assert [r.task_id for r in link.results()] == [TASK, TASK]
    link.deliver(TaskRun(TASK, f"echo x >> {marker}", user, 10))  # the server redelivers
    assert TASK not in runner.running
    link.deliver(TaskStop(TASK))
    assert link.results()[-1].status == "Success"
    link.deliver(TaskResultAck(TASK))  # the spool's files cannot all go: no error either
    for hook in link.connect_hooks:
        hook()
    assert len(link.results()) == 3 and marker.read_text() == "x\n"


async def test_a_stop_for_an_unknown_task_with_an_unwritable_spool_is_answered(tmp_path):
    link = Link(tmp_path)
    runner = CommandRunner(link)
    (runner.spool.directory / f"{TASK}.result").mkdir()
    link.deliver(TaskStop(TASK))  # must not raise into the connection
    [result] = link.results()
    assert result.status == "Cancelled"
    link.deliver(TaskRun(TASK, "true", os.environ.get("USER", "root"), 10))
    assert TASK not in runner.running
