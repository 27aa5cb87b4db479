"""What the command runner needs from the platform (``agent.posix_tasks`` on Linux,
``agent.windows.tasks`` on Windows): a started script process, its whole tree, and errors
that become a task's ErrorCode."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

ENV_PREFIX = "PORTHOLE_"
"""The only variables a task's environment may receive from the server."""


def task_variables(env: Mapping[str, str]) -> dict[str, str]:
    """The server's variables a script may see (parameter values, ``ACS::`` built-ins)."""
    return {k: v for k, v in env.items()
            if k.startswith(ENV_PREFIX) and "=" not in k and "\0" not in k + v}


class TaskError(Exception):
    """A task could not be started (or a file not written); ``code`` is its ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class TaskProcess(Protocol):
    """A running script: its output (stdout and stderr together) and its process tree."""

    pid: int
    start_time: int
    """Tells a reused pid apart after an agent restart (-1 where not needed)."""
    stdout: asyncio.StreamReader

    async def wait(self) -> int:
        """The exit status once the script's own process has ended."""
        ...

    def kill_tree(self) -> None:
        """End the script and every process it started (idempotent)."""
        ...

    def close(self) -> None:
        """Release what the run held (handles, a script file); called once at the end."""
        ...
