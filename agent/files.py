"""File channels: copy files to and from the instance as the run-as user.

The file work is done by ``agent.filehelper`` running as that user (so only what the user
may read or write is touched); this channel moves its bytes with the usual credit and
resume, and ends with the helper's JSON result (checksum and size) in the close's detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import sys
from pathlib import Path
from typing import Any

from agent import filehelper
from agent.channel import AgentChannel, ChannelRefused
from proto.messages import MAX_CHUNK, ChannelAccept

log = logging.getLogger("porthole.agent.files")

OPERATIONS = {"put", "get", "mkdir", "list"}


def check_path(path: object) -> str:
    """An absolute, normalised path with no '..' component, or ChannelRefused."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise ChannelRefused("InvalidPath", f"remote path {path!r} must be absolute")
    if ".." in path.split("/"):
        raise ChannelRefused("InvalidPath", f"remote path {path!r} contains '..'")
    return posixpath.normpath(path)


def _run_as(user: str) -> Any:
    """The run-as account (an ``agent.users.RunAs``); copies run as the user on Linux only."""
    if sys.platform == "win32":
        raise ChannelRefused("UnsupportedPlatform",
                             "file copy is not supported by Windows agents yet")
    else:
        from agent.users import RunAsError, run_as

        try:
            return run_as(user)
        except RunAsError as exc:
            raise ChannelRefused(exc.code, str(exc)) from None


class FileChannel(AgentChannel):
    receive_window = 2 * 1024 * 1024  # see cli.stream.BULK_WINDOW

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.proc: asyncio.subprocess.Process | None = None
        self._credit = asyncio.Event()
        self._writes: asyncio.Task[None] | None = None

    async def start(self) -> None:
        op = self.params.get("op")
        if op not in OPERATIONS:
            raise ChannelRefused("InvalidOperation", f"unknown file operation {op!r}")
        path = check_path(self.params.get("path"))
        user = str(self.params.get("user") or "root")
        if not self.config.allows(user):
            raise ChannelRefused("RunAsNotAllowed",
                                 f"this agent's allowed_users does not include {user!r}")
        account = _run_as(user)
        args = [op, path]
        if op == "put":
            args += [f"{int(self.params.get('mode', 0o644)) & 0o7777:o}",
                     str(float(self.params.get("mtime", 0)) or "0")]
        elif op == "mkdir":
            args.append(f"{int(self.params.get('mode', 0o755)) & 0o7777:o}")
        self.proc = await asyncio.create_subprocess_exec(
            _interpreter(), "-I", "-c", _HELPER_SOURCE, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd="/", env=account.env(),
            limit=MAX_CHUNK, **account.popen,  # type: ignore[arg-type]
        )
        log.info("channel %d: %s %s as %s", self.id, op, path, user)
        self.send(ChannelAccept(self.id, self.receive_window))
        if op != "put":
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        asyncio.create_task(self._run(op))

    async def _run(self, op: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        if op in ("get", "list"):
            while True:
                await self._credit.wait()
                room = min(self.endpoint.sender.available(), MAX_CHUNK)
                if room <= 0:
                    self._credit.clear()
                    continue
                data = await self.proc.stdout.read(room)
                if not data:
                    break
                self.send(self.endpoint.sender.send(data))
        self.send(self.endpoint.sender.send_eof())
        assert self.proc.stderr is not None
        result = (await self.proc.stderr.read()).decode(errors="replace").strip()
        code = await self.proc.wait()
        last = result.splitlines()[-1] if result else ""
        try:
            json.loads(last)
        except ValueError:
            last = json.dumps({"error": last or f"file helper exited with {code}"})
        self.finish("exited", code, last)

    def credit_changed(self) -> None:
        self._credit.set()

    def on_data(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        if self.proc.stdin.is_closing():
            self.consumed(len(data))
            return
        self.proc.stdin.write(data)
        asyncio.ensure_future(self._drained(len(data)))

    async def _drained(self, n: int) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with contextlib.suppress(OSError):
            await self.proc.stdin.drain()
        self.consumed(n)

    def on_eof(self) -> None:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()

    async def terminate(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # a put never renames its temporary file into place
            await self.proc.wait()
        self.finish("closed", None)
        self.forget()


_HELPER_SOURCE = Path(filehelper.__file__).read_text()
"""Passed with -c: the helper needs no access to the agent's install as the run-as user."""


def _interpreter() -> str:
    """A Python every user may run (the agent's own may sit under a private home)."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
