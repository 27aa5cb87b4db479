"""The agent's connection loop: dial out, authenticate, heartbeat, serve, reconnect forever."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect

from agent.channel import AgentChannel, ChannelRefused
from agent.config import AgentConfig
from agent.files import FileChannel
from agent.port import PortChannel
from agent.shell import ShellChannel
from agent.state import AgentState
from agent.status import write_status
from agent.sysinfo import host_info
from agent.systemd import notify, watchdog_interval
from proto import ProtocolError
from proto.handshake import auth_payload
from proto.messages import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSIONS,
    Auth,
    Challenge,
    ChannelAck,
    ChannelClose,
    ChannelData,
    ChannelOpen,
    ChannelResume,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Message,
    TerminalResize,
    Welcome,
    decode,
    encode,
)

log = logging.getLogger("porthole.agent")

BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0
HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds before the next address of the server's name is tried while one is silent."""
FATAL_CODES = {"InstanceDeregistered", "InstanceNotFound", "AuthFailed", "UnsupportedVersion"}
EXIT_FATAL = 3

M = TypeVar("M", bound=Message)

CHANNEL_KINDS: dict[str, type[AgentChannel]] = {
    "shell": ShellChannel, "port": PortChannel, "file": FileChannel,
}


class Fatal(Exception):
    """The server refused this agent for good; retrying cannot help."""


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 32)))


def gateway_url(server: str) -> str:
    parts = urlsplit(server)
    scheme = {"https": "wss", "wss": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"server URL {server!r} must start with https://")
    return urlunsplit((scheme, parts.netloc, "/agent/v1/connect", "", ""))


class Agent:
    def __init__(self, state: AgentState, config: AgentConfig | None = None) -> None:
        self.state = state
        self.config = config or AgentConfig()
        self.channels: dict[int, AgentChannel] = {}
        # Frames for channels whose start() has not finished yet, replayed once it has.
        self._starting: dict[int, list[Message]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.urls = [gateway_url(server) for server in state.servers]
        # Agents start at different replicas so that a fleet spreads over them.
        self._url_index = int.from_bytes(state.instance_id.encode()[-4:], "big") % len(self.urls)
        self.url = self.urls[self._url_index]
        self.ssl = state.ssl_context()
        self.handlers: dict[type[Message], Callable[[Any], None]] = {}
        """Message kinds served by a capability module (see agent.commands)."""
        self.connect_hooks: list[Callable[[], None]] = []
        """Called after every (re)connection, e.g. to resend what the server has not acked."""
        self._ws: ClientConnection | None = None
        self.connected_at: float | None = None
        self.last_heartbeat_ack: float | None = None

    def write_status(self, **values: Any) -> None:
        with contextlib.suppress(OSError):
            write_status(self.state.directory, instance_id=self.state.instance_id,
                         server=self.state.server, connected=self._ws is not None,
                         connected_since=self.connected_at,
                         last_heartbeat=self.last_heartbeat_ack,
                         channels=len(self.channels), **values)

    async def _watchdog(self, interval: float) -> None:
        """Ping systemd's watchdog while the event loop runs (a hung loop misses pings)."""
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run_forever(self) -> int:
        attempt = 0
        notify("READY=1")
        interval = watchdog_interval()
        if interval:
            self._watchdog_task = asyncio.create_task(self._watchdog(interval))
        self.write_status()
        while True:
            try:
                await self._connection()
            except Fatal as exc:
                log.error("server refused this agent: %s; not retrying", exc)
                return EXIT_FATAL
            except (OSError, TimeoutError, ProtocolError, websockets.WebSocketException) as exc:
                log.warning("connection to %s failed: %s", self.url, _describe(exc))
            if self.connected_at is not None:
                attempt = 0  # the last attempt got through; start backing off afresh
                self.connected_at = None
            # Fail over to the next server; back off further only after each full round.
            self._url_index = (self._url_index + 1) % len(self.urls)
            self.url = self.urls[self._url_index]
            delay = backoff_delay(attempt // len(self.urls))
            attempt += 1
            log.info("reconnecting in %.1f s", delay)
            notify(f"STATUS=disconnected; reconnecting in {delay:.0f} s")
            self.write_status(next_attempt_at=time.time() + delay)
            await asyncio.sleep(delay)

    async def _connection(self) -> None:
        async with connect(
            self.url, ssl=self.ssl, compression=None, max_size=MAX_FRAME_SIZE,
            open_timeout=15, ping_interval=20, ping_timeout=20, close_timeout=5,
            user_agent_header=f"porthole-agent/{host_info()['agent_version']}",
            # A server name with several addresses (replicas): when one host is down and
            # drops the connection attempt, the next address is tried after this delay
            # instead of after the whole open_timeout.
            happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY,
        ) as ws:
            interval = await self._handshake(ws)
            self._ws = ws
            self.connected_at = time.time()
            log.info("connected to %s as %s", self.url, self.state.instance_id)
            notify(f"STATUS=connected to {self.url}")
            self.write_status()
            self._outbox = asyncio.Queue()
            heartbeat = asyncio.create_task(self._heartbeats(ws, interval))
            writer = asyncio.create_task(self._writer(ws, self._outbox))
            try:
                for hook in self.connect_hooks:
                    hook()
                for channel in list(self.channels.values()):
                    channel.link_up()
                async for frame in ws:
                    if isinstance(frame, str):
                        raise ProtocolError("text frame from server", "MalformedFrame")
                    self._on_message(decode(frame))
            finally:
                self._ws = None
                self.write_status()
                heartbeat.cancel()
                writer.cancel()
                for channel in list(self.channels.values()):
                    channel.link_down()
            log.warning("server closed the connection (%s)", ws.close_reason or ws.close_code)

    async def _handshake(self, ws: ClientConnection) -> float:
        info = host_info()
        await ws.send(encode(Hello(list(PROTOCOL_VERSIONS), self.state.instance_id,
                                   info["agent_version"], info["hostname"], info["platform"],
                                   info["os_name"])))
        challenge = await self._expect(ws, Challenge)
        signature = self.state.key.sign(
            auth_payload(self.state.instance_id, challenge.nonce, challenge.version)
        )
        await ws.send(encode(Auth(signature)))
        welcome = await self._expect(ws, Welcome)
        return max(1.0, welcome.heartbeat_interval)

    async def _expect(self, ws: ClientConnection, kind: type[M]) -> M:
        try:
            frame = await asyncio.wait_for(ws.recv(), 15)
        except websockets.ConnectionClosed as exc:
            raise ProtocolError(f"server closed the connection during the handshake: "
                                f"{exc.rcvd.reason if exc.rcvd else 'no reason'}") from None
        if isinstance(frame, str):
            raise ProtocolError("text frame from server", "MalformedFrame")
        message = decode(frame)
        if isinstance(message, Error):
            if message.code in FATAL_CODES:
                raise Fatal(f"{message.message} ({message.code})")
            raise ProtocolError(f"{message.message} ({message.code})", message.code)
        if not isinstance(message, kind):
            raise ProtocolError(f"expected {kind.TYPE}, got {message.TYPE}", "UnexpectedMessage")
        return message

    def send(self, message: Message) -> None:
        """Queue a frame for the server; dropped while disconnected (channels replay and
        results are resent on reconnect)."""
        if self._ws is not None:
            self._outbox.put_nowait(encode(message))

    async def _writer(self, ws: ClientConnection, outbox: asyncio.Queue[bytes]) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            while True:
                await ws.send(await outbox.get())

    async def _heartbeats(self, ws: ClientConnection, interval: float) -> None:
        seq = 0
        while True:
            seq += 1
            self.send(Heartbeat(seq, time.time()))
            await asyncio.sleep(interval)

    async def _open_channel(self, message: ChannelOpen) -> None:
        kind = CHANNEL_KINDS.get(message.kind)
        if kind is None:
            self._starting.pop(message.channel, None)
            self.send(ChannelClose(message.channel, f"unsupported channel kind {message.kind!r}"))
            return
        channel = kind(message, self.config, self.send, self._channel_done)
        self.channels[message.channel] = channel
        try:
            await channel.start()
        except Exception as exc:
            reason = f"{exc} ({exc.code})" if isinstance(exc, ChannelRefused) else \
                f"the agent could not start the channel: {exc}"
            log.warning("channel %d refused: %s", message.channel, reason)
            self._starting.pop(message.channel, None)
            self.channels.pop(message.channel, None)
            self.send(ChannelClose(message.channel, reason))
            return
        for early in self._starting.pop(message.channel, []):
            channel.handle(early)

    def _channel_done(self, channel_id: int) -> None:
        self.channels.pop(channel_id, None)

    def _on_message(self, message: Message) -> None:
        if isinstance(message, ChannelData | ChannelAck | ChannelResume | ChannelClose
                      | TerminalResize):
            channel = self.channels.get(message.channel)
            if message.channel in self._starting:
                self._starting[message.channel].append(message)
            elif channel is not None:
                channel.handle(message)
            elif not isinstance(message, ChannelClose | ChannelAck):  # late acks are harmless
                self.send(ChannelClose(message.channel, "no such channel on this agent"))
        elif isinstance(message, ChannelOpen):
            # A redelivered open is ignored.
            if message.channel not in self.channels and message.channel not in self._starting:
                self._starting[message.channel] = []
                task = asyncio.create_task(self._open_channel(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        elif type(message) in self.handlers:
            self.handlers[type(message)](message)
        elif isinstance(message, HeartbeatAck):
            self.last_heartbeat_ack = time.time()
            self.write_status()
        elif isinstance(message, Error):
            if message.code in FATAL_CODES:
                raise Fatal(f"{message.message} ({message.code})")
            log.warning("server error %s: %s", message.code, message.message)
        else:
            raise ProtocolError(f"unexpected {message.TYPE} from the server", "UnexpectedMessage")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, websockets.InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    return str(exc) or type(exc).__name__
