"""Port forwarding and the ssh ProxyCommand bridge: byte streams through port channels."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from typing import Any

import click

from cli.client import ApiError, Client, ConnectError
from cli.common import client, fail
from cli.config import Profile
from cli.stream import BULK_WINDOW, ChannelClient, SessionEnded
from proto.messages import MAX_CHUNK


class StreamBridge(ChannelClient):
    """Moves bytes between a local stream (socket or stdin/stdout) and a port channel."""

    receive_window = BULK_WINDOW

    def __init__(self, api: Client, start: dict[str, Any], reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, resume_timeout: float = 60.0) -> None:
        super().__init__(api, start, resume_timeout)
        self.reader = reader
        self.writer = writer
        self._credit = asyncio.Event()
        self._unwritten = 0

    async def run(self) -> int:
        pump = asyncio.create_task(self._pump())
        try:
            return await self.run_async()
        finally:
            pump.cancel()
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _pump(self) -> None:
        while True:
            await self._credit.wait()
            room = min(self.endpoint.sender.available(), MAX_CHUNK)
            if room <= 0 or self.ws is None:
                self._credit.clear()
                continue
            try:
                data = await self.reader.read(room)
            except OSError as exc:
                self.local_close(f"local connection failed: {exc}")
                return
            if not data:
                self.send_eof()
                return
            self.send_data(data)

    def credit_changed(self) -> None:
        self._credit.set()

    def deliver(self, data: bytes) -> None:
        self._unwritten += len(data)
        self.writer.write(data)
        asyncio.ensure_future(self._drained(len(data)))

    async def _drained(self, n: int) -> None:
        with contextlib.suppress(OSError):
            await self.writer.drain()
        self._unwritten -= n
        self.consumed(n)
        await self.maybe_finish()

    def deliver_eof(self) -> None:
        if self.writer.can_write_eof():
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    def output_idle(self) -> bool:
        return self._unwritten == 0


def start_port_session(profile: Profile, instance_id: str, port: int, host: str | None
                       ) -> tuple[Client, dict[str, Any]]:
    api = Client(profile)
    try:
        start = api.call("StartTerminalSession", InstanceId=instance_id, PortNumber=port,
                         RemoteHost=host)
    finally:
        api.close()
    return api, start


def _profile() -> Profile:
    return client().profile


@click.command()
@click.argument("instance_id")
@click.option("--remote-port", required=True, type=click.IntRange(1, 65535),
              help="Port on the instance (or on --remote-host as seen from it)")
@click.option("--local-port", default=0, show_default=True, type=click.IntRange(0, 65535),
              help="Local port to listen on; 0 picks a free one")
@click.option("--remote-host", default=None, help="Host the instance connects to "
              "(default 127.0.0.1; link-local and metadata addresses are refused)")
@click.option("--bind", default="127.0.0.1", show_default=True, help="Local address to bind")
def forward(instance_id: str, remote_port: int, local_port: int, remote_host: str | None,
            bind: str) -> None:
    """Forward a local TCP port to a port on or near an instance (Ctrl-C stops)."""
    profile = _profile()
    # One check up front, so a refusal (policy, region, offline agent) is one clear line.
    api = Client(profile)
    api.call("StartTerminalSession", InstanceId=instance_id, PortNumber=remote_port,
             RemoteHost=remote_host, DryRun=True)
    api.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, session = await asyncio.to_thread(start_port_session, profile, instance_id,
                                                 remote_port, remote_host)
            bridge = StreamBridge(api, session, reader, writer)
            bridge.notices = False
            await bridge.run()
        except (ApiError, ConnectError, SessionEnded) as exc:
            message = getattr(exc, "message", None) or str(exc)
            click.echo(f"porthole: connection not forwarded: {message}", err=True)
            writer.close()

    async def serve() -> None:
        server = await asyncio.start_server(handle, bind, local_port, limit=MAX_CHUNK)
        port = server.sockets[0].getsockname()[1]
        target = f"{remote_host or '127.0.0.1'}:{remote_port}"
        click.echo(f"forwarding {bind}:{port} -> {instance_id} {target} (Ctrl-C to stop)",
                   err=not sys.stdout.isatty())
        if not sys.stdout.isatty():
            click.echo(str(port))
            sys.stdout.flush()
        async with server:
            await server.serve_forever()

    try:
        asyncio.run(serve())
    except OSError as exc:
        fail(f"cannot listen on {bind}:{local_port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


@click.command("ssh-proxy")
@click.argument("instance_id")
@click.argument("port", default=22, type=click.IntRange(1, 65535))
def ssh_proxy(instance_id: str, port: int) -> None:
    """Bridge stdin/stdout to PORT on the instance, for ssh's ProxyCommand."""
    profile = _profile()

    async def bridge() -> int:
        api, start = await asyncio.to_thread(start_port_session, profile, instance_id, port,
                                             None)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_CHUNK)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                     os.fdopen(sys.stdin.fileno(), "rb", buffering=0))
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(sys.stdout.fileno(), "wb", buffering=0))
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return await StreamBridge(api, start, reader, writer).run()

    try:
        sys.exit(asyncio.run(bridge()))
    except SessionEnded as end:
        fail(end.message, end.code)


@click.command("ssh-config")
def ssh_config() -> None:
    """Print a `Host mi-*` block for ~/.ssh/config that reaches instances through Porthole."""
    exe = shutil.which("porthole") or os.path.abspath(sys.argv[0])
    click.echo(f"""Host mi-*
    ProxyCommand {exe} ssh-proxy %h %p
    StrictHostKeyChecking accept-new
    ServerAliveInterval 30""")
