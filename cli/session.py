"""An interactive terminal session: the operator's end of the shell channel."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
from typing import Any

from cli.client import Client
from cli.stream import ChannelClient, SessionEnded
from cli.terminal import EscapeFilter, RawMode, window_size
from proto.messages import MAX_CHUNK, TerminalResize


class TerminalSession(ChannelClient):
    def __init__(self, client: Client, start: dict[str, Any], resume_timeout: float = 60.0,
                 stdin: int = 0, stdout: int = 1) -> None:
        super().__init__(client, start, resume_timeout)
        self.stdin = stdin
        self.stdout = stdout
        self.escapes = EscapeFilter() if os.isatty(stdin) else None
        self._reading_stdin = False
        self._stdin_eof = False
        self._pollable = True
        self._credit = asyncio.Event()
        self._file_reader: asyncio.Future[None] | None = None
        self._out = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stdout")
        self._pending_out = bytearray()
        self._out_ready = asyncio.Event()
        self._writing = False

    def run(self) -> tuple[int, str]:
        """Run until the remote side ends; returns (exit status, message for the operator)."""
        with RawMode(self.stdin) as raw:
            try:
                return asyncio.run(self._main()), ""
            except SessionEnded as end:
                return end.code, end.message
            finally:
                raw.restore()
                self._out.shutdown(wait=False)

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._writer_task = asyncio.create_task(self._writer())
        if os.isatty(self.stdin):
            loop.add_signal_handler(signal.SIGWINCH, self._send_size)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.local_close, f"porthole client got {sig.name}")
        try:
            return await self.run_async()
        finally:
            self._stop_stdin()

    # --- output: agent -> terminal ------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        self._pending_out += data
        self._out_ready.set()

    def output_idle(self) -> bool:
        return not self._pending_out and not self._writing

    async def _writer(self) -> None:
        """Write output to the terminal in a thread (a slow terminal must not stall
        keystrokes), as much as has arrived per write; credit returns as it is written."""
        loop = asyncio.get_running_loop()
        while True:
            await self._out_ready.wait()
            self._out_ready.clear()
            if not self._pending_out:
                continue
            data, self._pending_out = bytes(self._pending_out), bytearray()
            self._writing = True
            try:
                await loop.run_in_executor(self._out, _write_all, self.stdout, data)
            finally:
                self._writing = False
            self.consumed(len(data))
            await self.maybe_finish()

    # --- input: terminal -> agent -------------------------------------------------------

    def on_connected(self) -> None:
        self._send_size()

    def _send_size(self) -> None:
        cols, rows = window_size(self.stdout if os.isatty(self.stdout) else self.stdin)
        self.send(TerminalResize(self.endpoint.channel, cols, rows))

    def credit_changed(self) -> None:
        want = (self.ws is not None and not self._stdin_eof
                and self.endpoint.sender.available() > 0)
        if want and not self._pollable:
            self._credit.set()
            if self._file_reader is None:
                self._file_reader = asyncio.ensure_future(self._read_unpollable_stdin())
            return
        if want and not self._reading_stdin:
            try:
                asyncio.get_running_loop().add_reader(self.stdin, self._on_stdin)
            except PermissionError:  # a regular file or /dev/null: epoll cannot watch it
                self._pollable = False
                self.credit_changed()
                return
        elif not want and self._reading_stdin:
            asyncio.get_running_loop().remove_reader(self.stdin)
        self._reading_stdin = want

    def _stop_stdin(self) -> None:
        if self._reading_stdin:
            asyncio.get_running_loop().remove_reader(self.stdin)
            self._reading_stdin = False

    async def _read_unpollable_stdin(self) -> None:
        """Stdin that epoll cannot watch (a file): read it in a thread as credit allows."""
        loop = asyncio.get_running_loop()
        while not self._stdin_eof:
            await self._credit.wait()
            room = min(self.endpoint.sender.available(), MAX_CHUNK)
            if self.ws is None or room <= 0:
                self._credit.clear()
                continue
            data = await loop.run_in_executor(None, os.read, self.stdin, room)
            self._got_stdin(data)

    def _on_stdin(self) -> None:
        room = min(self.endpoint.sender.available(), MAX_CHUNK)
        try:
            data = os.read(self.stdin, max(1, room - 1))  # room for a held-back "~"
        except (BlockingIOError, InterruptedError):
            return
        self._got_stdin(data)

    def _got_stdin(self, data: bytes) -> None:
        if not data:
            if self.escapes is None and self.endpoint.sender.available():
                self.send_data(b"\x04")  # EOF, as ^D on a terminal
            self._stdin_eof = True
            self.credit_changed()
            return
        if self.escapes is not None:
            data, disconnect = self.escapes.feed(data)
            if disconnect:
                self._stdin_eof = True
                self._stop_stdin()
                self.local_close("disconnected by the operator (~.)")
                return
        if data:
            self.send_data(data)
        self.credit_changed()

    def local_close(self, reason: str) -> None:
        self._stdin_eof = True
        self._stop_stdin()
        super().local_close(reason)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
