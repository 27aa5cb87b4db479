"""The operator's end of one channel: connect, resume after a broken link, acks, credit, end.

Runs the same channel state machine as the agent (proto.channel.Endpoint), so a broken link
is repaired by reconnecting and replaying from the last acknowledged frame. Subclasses move
the bytes: a terminal (cli.session) or a socket or pipe pair (cli.forward).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from cli.client import Client
from proto import ProtocolError
from proto.channel import Endpoint
from proto.messages import (
    MAX_FRAME_SIZE,
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelResume,
    Error,
    Message,
    decode,
    encode,
)

WINDOW = 1024 * 1024
"""Credit towards the operator's terminal. Through another replica a frame's round trip is a
few milliseconds, and 256 KiB of credit left bulk output waiting for acks (25 MiB/s there
against 35 MiB/s with 1 MiB, measured by bench/replicas.py); OpenSSH grants 2 MiB. What is
in flight when Ctrl-C arrives still reaches the screen, at most this much."""
BULK_WINDOW = 2 * 1024 * 1024
"""Byte streams (forwards, copies) keep more in flight: on a path with a few milliseconds
of round trip, 256 KiB of credit would cap a connection at tens of MB/s."""
EXIT_ABNORMAL = 255


class SessionEnded(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ChannelClient:
    """Subclasses implement :meth:`deliver` (and may override the other hooks)."""

    receive_window = WINDOW

    def __init__(self, client: Client, start: dict[str, Any], resume_timeout: float = 60.0
                 ) -> None:
        self.client = client
        self.session_id: str = start["SessionId"]
        self.path: str = start["StreamPath"]
        # no credit until the agent's resume arrives
        self.endpoint = Endpoint(int(start["Channel"]), 0, self.receive_window)
        self.resume_timeout = resume_timeout
        self.ws: ClientConnection | None = None
        self.remote_close: ChannelClose | None = None
        self.done: asyncio.Future[int] | None = None
        self.notices = True

    # --- hooks ------------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        """Bytes from the agent, in order; call :meth:`consumed` once they are written."""
        raise NotImplementedError

    def deliver_eof(self) -> None:
        """The agent's side ended its direction."""

    def credit_changed(self) -> None:
        """Connected or credit grew: a good time to read more input."""

    def on_connected(self) -> None:
        """A (re)connection is up and the resume is sent."""

    def output_idle(self) -> bool:
        """True when everything delivered has been written on."""
        return True

    # --- run ----------------------------------------------------------------------------

    async def run_async(self) -> int:
        """Run until the channel ends; returns the remote exit status or raises SessionEnded."""
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
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
                self.notice("connection lost; reconnecting")
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
            self.on_connected()
            try:
                async for frame in ws:
                    if isinstance(frame, str):
                        raise ProtocolError("text frame from server", "MalformedFrame")
                    await self._on_message(decode(frame))
                    if self.done is not None and self.done.done():
                        return
            finally:
                self.ws = None
        raise ConnectionError("server closed the session stream")

    async def _on_message(self, message: Message) -> None:
        if isinstance(message, ChannelData):
            data = self.endpoint.receiver.on_data(message)
            if data:
                self.deliver(data)
            elif self.endpoint.receiver.eof and message.seq == self.endpoint.receiver.received:
                self.deliver_eof()
                self._ack_if_due(force=True)
        elif isinstance(message, ChannelAck):
            self.endpoint.sender.on_ack(message)
            self.credit_changed()
        elif isinstance(message, ChannelResume):
            for out in self.endpoint.on_resume(message):
                self.send(out)
            self.credit_changed()
        elif isinstance(message, ChannelClose):
            if self.remote_close is None:  # the first end counts; a later one is an echo
                self.remote_close = message
            await self.maybe_finish()
        elif isinstance(message, Error):
            raise SessionEnded(EXIT_ABNORMAL, f"{message.message} ({message.code})")

    # --- for subclasses -----------------------------------------------------------------

    def consumed(self, n: int) -> None:
        self.endpoint.receiver.consumed(n)
        self._ack_if_due()

    def _ack_if_due(self, force: bool = False) -> None:
        if force or self.endpoint.receiver.should_ack():
            self.send(self.endpoint.receiver.ack())

    def send(self, message: Message) -> None:
        ws = self.ws
        if ws is not None:
            asyncio.ensure_future(_quiet_send(ws, encode(message)))

    def send_data(self, data: bytes) -> None:
        self.send(self.endpoint.sender.send(data))

    def send_eof(self) -> None:
        self.send(self.endpoint.sender.send_eof())

    async def maybe_finish(self) -> None:
        """End once the agent closed and everything it sent has been written on."""
        close = self.remote_close
        assert self.done is not None
        if close is None or self.done.done() or self.endpoint.receiver.received < close.last_seq:
            return  # a replay of the last output is still on its way
        if not self.output_idle():
            return  # called again once the output is written
        if close.reason == "exited" and close.exit_code is not None:
            self.done.set_result(close.exit_code)
        else:
            code = EXIT_ABNORMAL if close.exit_code is None else close.exit_code
            self.done.set_exception(SessionEnded(code, f"session ended: {close.reason}"))
        ws = self.ws
        if ws is not None:  # the final ack lets both ends forget the channel now
            await _quiet_send(ws, encode(self.endpoint.receiver.ack()))
            await ws.close()

    def local_close(self, reason: str) -> None:
        """End the channel from this side: tell the agent, then leave."""
        assert self.done is not None
        if not self.done.done():
            self.done.set_exception(SessionEnded(EXIT_ABNORMAL, reason))
        if self.ws is not None:
            asyncio.ensure_future(self._close_ws(self.ws, reason))

    async def _close_ws(self, ws: ClientConnection, reason: str) -> None:
        await _quiet_send(ws, encode(ChannelClose(self.endpoint.channel, reason)))
        await ws.close()

    def notice(self, text: str) -> None:
        if self.notices:
            sys.stderr.write(f"\r\n[porthole: {text}]\r\n")
            sys.stderr.flush()


async def _quiet_send(ws: ClientConnection, frame: bytes) -> None:
    try:
        await ws.send(frame)
    except websockets.ConnectionClosed:
        pass


def _http_error(exc: websockets.InvalidStatus) -> str:
    try:
        body = json.loads(exc.response.body or b"{}")
        return f"{body['Message']} ({body['Code']})"
    except (ValueError, KeyError, TypeError):
        return f"the server refused the session stream (HTTP {exc.response.status_code})"
