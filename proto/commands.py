"""The command message family: tasks (one run of an invocation on one instance), their
results, stop requests, file pushes and boot reports.

A task is named ``<invocation id>.<repeat>``; the agent owns a task from TaskRun until the
server acknowledges its TaskResult. Output travels in a pull loop so that a result of up to
MAX_TASK_OUTPUT bytes never needs more than one OUTPUT_CHUNK frame in flight:

    agent  -> TaskResult(head = the first OUTPUT_CHUNK bytes, output_size)
    server -> TaskOutputRequest(offset)      (only while it holds fewer than output_size)
    agent  -> TaskOutput(offset, data)       ... repeated ...
    server -> TaskResultAck                  (once every byte is stored)

After a broken link the agent sends its TaskResult again and the server asks from the offset it
has stored, so nothing is stored twice and nothing is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from proto.messages import Message

OUTPUT_CHUNK = 64 * 1024
"""Largest output payload of one TaskResult head or TaskOutput frame."""
MAX_TASK_OUTPUT = 16 * 1024 * 1024
"""Output bytes an agent keeps per task; the rest is counted in ``dropped``."""
MAX_FILE_CONTENT = 32 * 1024
"""Largest file content SendFile pushes."""

TASK_ID_RE = re.compile(r"^t-[0-9a-f]{16,32}\.[0-9]{1,9}$")


def task_id(invocation_id: str, repeat: int) -> str:
    return f"{invocation_id}.{repeat}"


def split_task_id(value: str) -> tuple[str, int]:
    invocation_id, _, repeat = value.rpartition(".")
    return invocation_id, int(repeat)


def is_task_id(value: str) -> bool:
    return bool(TASK_ID_RE.match(value))


@dataclass(frozen=True)
class TaskRun(Message):
    """Server -> agent: run ``script`` as ``username``; ``env`` carries parameter values
    (never substituted into the script text)."""

    TYPE: ClassVar[str] = "task_run"
    task_id: str
    script: str
    username: str = "root"
    timeout: int = 60
    working_dir: str = ""
    command_type: str = "RunShellScript"
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FileSend(Message):
    """Server -> agent: write ``content`` to ``target_dir/name`` and report a TaskResult."""

    TYPE: ClassVar[str] = "file_send"
    task_id: str
    target_dir: str
    name: str
    content: bytes
    owner: str = "root"
    group: str = ""
    mode: str = "0644"
    overwrite: bool = False


@dataclass(frozen=True)
class TaskStop(Message):
    """Server -> agent: end the task's whole process tree (it reports Terminated), or report
    Cancelled if the task never started here."""

    TYPE: ClassVar[str] = "task_stop"
    task_id: str


@dataclass(frozen=True)
class TaskResult(Message):
    TYPE: ClassVar[str] = "task_result"
    task_id: str
    status: str
    exit_code: int | None
    error_code: str
    error_info: str
    head: bytes
    output_size: int
    dropped: int
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class TaskOutputRequest(Message):
    """Server -> agent: send the output of ``task_id`` from ``offset``."""

    TYPE: ClassVar[str] = "task_out_req"
    task_id: str
    offset: int


@dataclass(frozen=True)
class TaskOutput(Message):
    TYPE: ClassVar[str] = "task_out"
    task_id: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class TaskResultAck(Message):
    """Server -> agent: the whole result is stored; the agent may forget the task."""

    TYPE: ClassVar[str] = "task_ack"
    task_id: str


@dataclass(frozen=True)
class AgentBoot(Message):
    """Agent -> server after each connection: the instance's current boot id (a new one means
    the instance rebooted, which starts EveryReboot and NextRebootOnly invocations)."""

    TYPE: ClassVar[str] = "agent_boot"
    boot_id: str
