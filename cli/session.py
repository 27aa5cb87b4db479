"""An interactive terminal session: the operator's end of the shell channel.

Runs the same channel state machine as the agent (proto.channel.Endpoint), so a broken link
is repaired by reconnecting and replaying from the last acknowledged frame.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sys
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from cli.client import Client
from cli.terminal import EscapeFilter, RawMode, window_size
from proto import ProtocolError
from proto.channel import Endpoint
from proto.messages import (
    MAX_CHUNK,
    MAX_FRAME_SIZE,
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelResume,
    Error,
    Message,
    TerminalResize,
    decode,
    encode,
)

WINDOW = 256 * 1024
EXIT_ABNORMAL = 255


class SessionEnded(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TerminalSession:
    def __init__(self, client: Client, start: dict[str, Any], resume_timeout: float = 60.0,
                 stdin: int = 0, stdout: int = 1) -> None:
        self.client = client
        self.session_id: str = start["SessionId"]
        self.path: str = start["StreamPath"]
        self.endpoint = Endpoint(int(start["Channel"]), 0, WINDOW)  # no credit until resume
        self.resume_timeout = resume_timeout
        self.stdin = stdin
        self.stdout = stdout
        self.escapes = EscapeFilter() if os.isatty(stdin) else None
        self.ws: ClientConnection | None = None
        self.remote_close: ChannelClose | None = None
        self.done: asyncio.Future[int] | None = None
        self._reading_stdin = False
        self._stdin_eof = False
        self._pollable = True
        self._credit = asyncio.Event()
        self._file_reader: asyncio.Future[None] | None = None
        self._out = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stdout")
        self._pending_out = bytearray()
        self._out_ready = asyncio.Event()
        self._writing = False

    # --- run ----------------------------------------------------------------------------

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
        self.done = loop.create_future()
        self._writer_task = asyncio.create_task(self._writer())
        if os.isatty(self.stdin):
            loop.add_signal_handler(signal.SIGWINCH, self._send_size)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._local_close, f"porthole client got {sig.name}")
        lost_at: float | None = None
        while True:
            try:
                await self._connection()
            except (OSError, TimeoutError, websockets.WebSocketException,
                    ProtocolError) as exc:
                if isinstance(exc, websockets.InvalidStatus):
                    raise SessionEnded(EXIT_ABNORMAL, _http_error(exc)) from None
                if self.done.done():
                    return self.done.result()
                now = loop.time()
                lost_at = lost_at or now
                if now - lost_at > self.resume_timeout:
                    raise SessionEnded(EXIT_ABNORMAL,
                                       f"connection lost for {self.resume_timeout:.0f} s; "
                                       f"session {self.session_id} may still be open") from None
                self._notice("connection lost; reconnecting")
                await asyncio.sleep(min(2.0, 0.2 + (now - lost_at) / 10))
                continue
            if self.done.done():
                return self.done.result()
            lost_at = None

    async def _connection(self) -> None:
        url = f"wss://{self.client.host}:{self.client.port}{self.path}"
        headers = self.client.signed_headers("GET", self.path, b"")
        async with connect(url, ssl=self.client.ssl, additional_headers=headers,
                           compression=None, max_size=MAX_FRAME_SIZE, open_timeout=15,
                           ping_interval=20, ping_timeout=20, close_timeout=2) as ws:
            self.ws = ws
            await ws.send(encode(self.endpoint.resume()))
            self._send_size()
            try:
                async for frame in ws:
                    if isinstance(frame, str):
                        raise ProtocolError("text frame from server", "MalformedFrame")
                    await self._on_message(decode(frame))
                    if self.done is not None and self.done.done():
                        return
            finally:
                self.ws = None
                self._stop_stdin()
        raise ConnectionError("server closed the session stream")

    # --- from the agent ----------------------------------------------------------------

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, ChannelData):
            data = self.endpoint.receiver.on_data(message)
            if data:
                self._pending_out += data
                self._out_ready.set()
        elif isinstance(message, ChannelAck):
            self.endpoint.sender.on_ack(message)
            self._update_stdin()
        elif isinstance(message, ChannelResume):
            for out in self.endpoint.on_resume(message):
                self._send(out)
            self._update_stdin()
        elif isinstance(message, ChannelClose):
            self.remote_close = message
            await self._maybe_finish()
        elif isinstance(message, Error):
            raise SessionEnded(EXIT_ABNORMAL, f"{message.message} ({message.code})")

    async def _maybe_finish(self) -> None:
        close = self.remote_close
        assert self.done is not None
        if close is None or self.done.done() or self.endpoint.receiver.received < close.last_seq:
            return  # a replay of the last output is still on its way
        if self._pending_out or self._writing:
            return  # the writer finishes once the terminal has everything
        if close.reason == "exited" and close.exit_code is not None:
            self.done.set_result(close.exit_code)
        else:
            code = EXIT_ABNORMAL if close.exit_code is None else close.exit_code
            self.done.set_exception(SessionEnded(code, f"session ended: {close.reason}"))
        ws = self.ws
        if ws is not None:  # the final ack lets both ends forget the channel now
            await _quiet_send(ws, encode(self.endpoint.receiver.ack()))
            await ws.close()

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
            self.endpoint.receiver.consumed(len(data))
            if self.endpoint.receiver.should_ack():
                self._send(self.endpoint.receiver.ack())
            await self._maybe_finish()

    # --- to the agent ------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        ws = self.ws
        if ws is not None:
            asyncio.ensure_future(_quiet_send(ws, encode(message)))

    def _send_size(self) -> None:
        cols, rows = window_size(self.stdout if os.isatty(self.stdout) else self.stdin)
        self._send(TerminalResize(self.endpoint.channel, cols, rows))

    def _update_stdin(self) -> None:
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
                self._update_stdin()
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
                self._send(self.endpoint.sender.send(b"\x04"))  # EOF, as ^D on a terminal
            self._stdin_eof = True
            self._update_stdin()
            return
        if self.escapes is not None:
            data, disconnect = self.escapes.feed(data)
            if disconnect:
                self._local_close("disconnected by the operator (~.)")
                return
        if data:
            self._send(self.endpoint.sender.send(data))
        self._update_stdin()

    def _local_close(self, reason: str) -> None:
        """End the session from this side (``~.``, SIGTERM): tell the agent, then leave."""
        assert self.done is not None
        if not self.done.done():
            self.done.set_exception(SessionEnded(EXIT_ABNORMAL, reason))
        self._stop_stdin()
        self._stdin_eof = True
        if self.ws is not None:
            asyncio.ensure_future(self._close_ws(self.ws, reason))

    async def _close_ws(self, ws: ClientConnection, reason: str) -> None:
        await _quiet_send(ws, encode(ChannelClose(self.endpoint.channel, reason)))
        await ws.close()

    def _notice(self, text: str) -> None:
        sys.stderr.write(f"\r\n[porthole: {text}]\r\n")
        sys.stderr.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


async def _quiet_send(ws: ClientConnection, frame: bytes) -> None:
    with contextlib.suppress(websockets.ConnectionClosed):
        await ws.send(frame)


def _http_error(exc: websockets.InvalidStatus) -> str:
    try:
        body = json.loads(exc.response.body or b"{}")
        return f"{body['Message']} ({body['Code']})"
    except (ValueError, KeyError, TypeError):
        return f"the server refused the session stream (HTTP {exc.response.status_code})"
