"""Port channels: one TCP connection from the instance to HOST:PORT per channel.

Bytes are read from the socket only while the operator has granted credit, so a fast
server stops in the kernel's socket buffer. A half-close travels as an end-of-stream frame
each way; the channel ends when both directions have ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

from agent.channel import AgentChannel, ChannelRefused
from proto.messages import MAX_CHUNK, ChannelAccept

log = logging.getLogger("porthole.agent.port")

CONNECT_TIMEOUT = 10.0
METADATA_ADDRESSES = {
    ipaddress.ip_address("169.254.169.254"),  # cloud instance metadata (most clouds)
    ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud metadata
    ipaddress.ip_address("fd00:ec2::254"),  # AWS metadata over IPv6
}


def forbidden_target(address: str) -> str | None:
    """Why forwarding to ``address`` is refused by default, or None."""
    ip = ipaddress.ip_address(address)
    if ip in METADATA_ADDRESSES:
        return f"{address} is an instance metadata address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    return None


class PortChannel(AgentChannel):
    receive_window = 2 * 1024 * 1024  # see cli.stream.BULK_WINDOW

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._credit = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._read_done = False
        self._write_done = False

    async def start(self) -> None:
        host = str(self.params.get("host") or "127.0.0.1")
        try:
            port = int(self.params.get("port", 0))
        except (TypeError, ValueError):
            port = 0
        if not 1 <= port <= 65535:
            raise ChannelRefused("InvalidPort", f"port {self.params.get('port')!r} is not valid")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ChannelRefused("HostNotFound", f"cannot resolve {host}: {exc}") from None
        address = str(infos[0][4][0])
        why = forbidden_target(address)
        if why and not self.config.allow_link_local_forwarding:
            raise ChannelRefused("ForwardingRefused",
                                 f"{why}; set allow_link_local_forwarding in agent.yaml to allow")
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(address, port, limit=MAX_CHUNK), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ChannelRefused("ConnectFailed",
                                 f"cannot connect to {host}:{port} from the instance: "
                                 f"{getattr(exc, 'strerror', None) or exc or 'timeout'}") from None
        log.info("channel %d: connected to %s:%d", self.id, host, port)
        self.send(ChannelAccept(self.id, self.receive_window))
        self._pump = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        assert self.reader is not None
        while True:
            await self._credit.wait()
            room = min(self.endpoint.sender.available(), MAX_CHUNK)
            if room <= 0:
                self._credit.clear()
                continue
            try:
                data = await self.reader.read(room)
            except OSError:
                data = b""
            if not data:
                self.send(self.endpoint.sender.send_eof())
                self._read_done = True
                self._maybe_done()
                return
            self.send(self.endpoint.sender.send(data))

    def credit_changed(self) -> None:
        self._credit.set()

    def on_data(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            self.consumed(len(data))
            return
        self.writer.write(data)
        asyncio.ensure_future(self._drained(len(data)))

    async def _drained(self, n: int) -> None:
        assert self.writer is not None
        with contextlib.suppress(OSError):
            await self.writer.drain()
        self.consumed(n)

    def on_eof(self) -> None:
        if self.writer is not None and self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()
        self._write_done = True
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._read_done and self._write_done:
            self.finish("exited", 0)

    async def terminate(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        self.release()
        self.finish("closed", None)
        self.forget()

    def release(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
