"""What every agent-side channel shares: the endpoint state machine, resume, a reliable end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from agent.config import AgentConfig
from proto.channel import Endpoint
from proto.messages import (
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelOpen,
    ChannelResume,
    Message,
    TerminalResize,
)

log = logging.getLogger("porthole.agent.channel")


class ChannelRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class AgentChannel:
    """Subclasses implement start(), on_data(), credit_changed() and terminate()."""

    receive_window = 64 * 1024

    def __init__(self, open_msg: ChannelOpen, config: AgentConfig,
                 send: Callable[[Message], None], on_done: Callable[[int], None]) -> None:
        self.id = open_msg.channel
        self.params: dict[str, Any] = open_msg.params
        self.config = config
        self.send = send
        self.on_done = on_done
        self.endpoint = Endpoint(self.id, open_msg.window, self.receive_window)
        self._expiry: asyncio.Task[None] | None = None
        self._forgotten = False

    async def start(self) -> None:
        raise NotImplementedError

    def on_data(self, data: bytes) -> None:
        """Bytes from the operator; call :meth:`consumed` once they are written on."""
        raise NotImplementedError

    def on_eof(self) -> None:
        """The operator's side ended its direction."""

    def on_resize(self, cols: int, rows: int) -> None:
        """A terminal resize (only terminals care)."""

    def credit_changed(self) -> None:
        """The operator granted credit: a good time to read more."""

    async def terminate(self) -> None:
        """End whatever runs behind the channel, then :meth:`finish` it."""
        raise NotImplementedError

    async def drain_output(self, finished: asyncio.Event, stop_writers: Callable[[], None]
                           ) -> None:
        """After the session's process exited: wait until ``finished`` (its output read out
        to the end). While credit is exhausted that waits for the peer, up to
        resume_timeout; if the end does not come although we could send, a leftover process
        still writes: ``stop_writers`` ends it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.resume_timeout
        while not finished.is_set() and loop.time() < deadline:
            try:
                await asyncio.wait_for(finished.wait(), 1.0)
            except TimeoutError:
                if self.endpoint.sender.available() > 0:
                    stop_writers()

    def consumed(self, n: int) -> None:
        self.endpoint.receiver.consumed(n)
        if self.endpoint.receiver.should_ack():
            self.send(self.endpoint.receiver.ack())

    def handle(self, message: Message) -> None:
        if isinstance(message, ChannelData):
            data = self.endpoint.receiver.on_data(message)
            if data:
                self.on_data(data)
            elif self.endpoint.receiver.eof and message.seq == self.endpoint.receiver.received:
                self.send(self.endpoint.receiver.ack())
                self.on_eof()
            elif self.endpoint.receiver.should_ack():
                self.send(self.endpoint.receiver.ack())
        elif isinstance(message, ChannelAck):
            self.endpoint.sender.on_ack(message)
            self.credit_changed()
            if self.endpoint.close_message is not None and self.endpoint.complete():
                self.forget()
        elif isinstance(message, ChannelResume):
            for out in self.endpoint.on_resume(message):
                self.send(out)
            self.credit_changed()
        elif isinstance(message, TerminalResize):
            self.on_resize(message.cols, message.rows)
        elif isinstance(message, ChannelClose):
            log.info("channel %d: closed by the peer (%s)", self.id, message.reason)
            asyncio.create_task(self.terminate())

    def finish(self, reason: str, exit_code: int | None, detail: str = "") -> None:
        """Send our end; keep the replay buffer until the peer has everything, within reason."""
        if self.endpoint.close_message is not None:
            return
        self.send(self.endpoint.close(reason, exit_code, detail))
        if self.endpoint.complete():
            self.forget()
        elif self._expiry is None:
            self._expiry = asyncio.create_task(self._expire(self.config.resume_timeout))

    def link_down(self) -> None:
        """The server went away: end the channel unless it comes back in time."""
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire(self.config.resume_timeout))

    def link_up(self) -> None:
        if self._expiry is not None and self.endpoint.close_message is None:
            self._expiry.cancel()
            self._expiry = None
        self.send(self.endpoint.resume())

    async def _expire(self, after: float) -> None:
        await asyncio.sleep(after)
        log.warning("channel %d: no peer for %.0f s; ending it", self.id, after)
        await self.terminate()
        self.forget()

    def forget(self) -> None:
        if not self._forgotten:
            self._forgotten = True
            self.release()
            self.on_done(self.id)

    def release(self) -> None:
        """Free file descriptors and sockets (called once)."""
