"""The agent's task spool: every task it owns, on disk, until the server acknowledges it.

For task T the spool directory holds ``T.task`` (what to run, and the process once started),
``T.out`` (output so far, at most MAX_TASK_OUTPUT bytes) and, once it ended, ``T.result``.
A result survives agent restarts and is sent again on every connection until acknowledged;
a ``T.task`` without a result after a restart is a task the agent lost while it ran.

The agent waits for the disk from a worker thread (``asyncio.to_thread``), so that a slow
disk never stalls its connection: sessions, heartbeats and other tasks go on meanwhile. A
task's record is on disk before the task starts (after a crash it is reported Terminated,
not run again); its result is sent as soon as it is written and synced just after: a power
loss in between leaves at worst an empty result file, and the task is then reported
Terminated after the reboot (the server keeps the first result it stored).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.state import write_private
from proto.commands import is_task_id

log = logging.getLogger("porthole.agent.spool")


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)

    def _path(self, task_id: str, suffix: str) -> Path:
        if not is_task_id(task_id):  # never a path from the wire without this check
            raise ValueError(f"malformed task id {task_id[:80]!r}")
        return self.directory / f"{task_id}.{suffix}"

    def knows(self, task_id: str) -> bool:
        return self._path(task_id, "task").exists() or self.result(task_id) is not None

    def begin(self, task_id: str, spec: dict[str, Any]) -> None:
        write_private(self._path(task_id, "task"), json.dumps(spec).encode())
        self._sync_directory()

    def update(self, task_id: str, **values: Any) -> None:
        """Add to what is known of a running task (its process). Not synced to disk: it
        matters after an agent restart, which keeps the page cache; a machine that lost
        power lost the process too."""
        spec = self.spec(task_id) or {}
        spec.update(values)
        write_private(self._path(task_id, "task"), json.dumps(spec).encode(), durable=False)

    def spec(self, task_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(task_id, "task").read_bytes())
        except (OSError, ValueError):
            return None

    def output_path(self, task_id: str) -> Path:
        return self._path(task_id, "out")

    def output_size(self, task_id: str) -> int:
        try:
            return self.output_path(task_id).stat().st_size
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("cannot read the output of %s: %s", task_id, exc)
            return 0

    def read_output(self, task_id: str, offset: int, length: int) -> bytes:
        try:
            with open(self.output_path(task_id), "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            log.warning("cannot read the output of %s: %s", task_id, exc)
            return b""

    def finish(self, task_id: str, result: dict[str, Any], durable: bool = True) -> None:
        """Record the result; ``durable=False`` leaves the wait for the disk to
        :meth:`sync`."""
        if durable:
            self._sync_output(task_id)
        write_private(self._path(task_id, "result"), json.dumps(result).encode(), durable)

    def sync(self, task_id: str) -> None:
        """Wait until a task's output and result are on disk (nothing if it was forgotten
        meanwhile)."""
        self._sync_output(task_id)
        _fsync(self._path(task_id, "result"))
        self._sync_directory()

    def _sync_directory(self) -> None:
        """The renames into place (POSIX; Windows cannot open a directory for this)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _sync_output(self, task_id: str) -> None:
        _fsync(self.output_path(task_id))

    def result(self, task_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(task_id, "result").read_bytes())
        except (OSError, ValueError):
            return None

    def results(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for path in sorted(self.directory.glob("*.result")):
            task_id = path.name[:-len(".result")]
            if is_task_id(task_id) and (result := self.result(task_id)) is not None:
                out.append((task_id, result))
        return out

    def unfinished(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for path in sorted(self.directory.glob("*.task")):
            task_id = path.name[:-len(".task")]
            # a result file that a power loss left empty counts as no result
            if is_task_id(task_id) and self.result(task_id) is None:
                out.append((task_id, self.spec(task_id) or {}))
        return out

    def forget(self, task_id: str) -> None:
        """Delete a task's files; one that cannot be deleted is left for later (a result is
        then sent again after a restart, and the server acknowledges it again)."""
        for suffix in ("result", "out", "task"):
            try:
                self._path(task_id, suffix).unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete %s from the spool: %s", task_id, exc)


def _fsync(path: Path) -> None:
    """Wait until a file is on disk; nothing if it is gone. Opened for writing: Windows
    flushes only such handles."""
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as f:
        os.fsync(f.fileno())
