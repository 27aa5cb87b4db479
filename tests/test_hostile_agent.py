"""Hostile agents: oversized, malformed and unknown frames, half-open and slow connections,
a heartbeat flood. Each is cut off (or ignored) cleanly while a real agent stays online and
operators keep being served."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgpack
import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from proto.handshake import auth_payload
from proto.messages import (
    PROTOCOL_VERSIONS,
    Auth,
    Challenge,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Welcome,
    decode,
    encode,
)
from tests.harness import BIN, Agent, Server, wait_for
from tests.test_hostile_api import bystander

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("hostile-agent")
    server = Server(root).start()
    agent = Agent(server, root / "agent").start()
    yield server, agent
    agent.stop()
    server.stop()


def _ssl(server: Server) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def _register(server: Server) -> tuple[str, Ed25519PrivateKey]:
    activation = server.activation(count=1)
    key = Ed25519PrivateKey.generate()
    body = json.dumps({
        "ActivationId": activation["ActivationId"],
        "ActivationCode": activation["ActivationCode"], "Region": "local",
        "PublicKey": base64.b64encode(key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)).decode(),
        "Hostname": "fake", "AgentVersion": "0"}).encode()
    request = urllib.request.Request(server.url + "/agent/v1/register", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, context=_ssl(server), timeout=30) as reply:
        return json.loads(reply.read())["InstanceId"], key


async def _connect(server: Server) -> Any:
    return await websockets.connect(server.url.replace("https", "wss") + "/agent/v1/connect",
                                    ssl=_ssl(server), compression=None, max_size=None,
                                    open_timeout=30)


async def _login(server: Server, instance_id: str, key: Ed25519PrivateKey) -> Any:
    ws = await _connect(server)
    await ws.send(encode(Hello(list(PROTOCOL_VERSIONS), instance_id, "0")))
    challenge = decode(await ws.recv())
    assert isinstance(challenge, Challenge)
    await ws.send(encode(Auth(key.sign(auth_payload(instance_id, challenge.nonce,
                                                     challenge.version)))))
    assert isinstance(decode(await ws.recv()), Welcome)
    return ws


async def _closed_with(ws: Any) -> tuple[int | None, list[Any]]:
    """Read until the server closes; returns the close code and any Error messages."""
    errors = []
    try:
        async for frame in ws:
            try:
                message = decode(frame)
            except Exception:  # noqa: BLE001 - whatever the server sent, keep reading
                continue
            if isinstance(message, Error):
                errors.append(message)
    except websockets.ConnectionClosed:
        pass
    return ws.close_code, errors


def _online(server: Server, agent: Agent) -> None:
    assert server.online(agent.instance_id)


def test_malformed_unknown_and_oversized_frames_close_only_that_connection(fleet):
    server, agent = fleet
    instance_id, key = _register(server)

    async def attacks() -> list[tuple[int | None, list[Any]]]:
        out = []
        for frame in (b"\xc1\xff garbage", msgpack.packb({"t": "no-such-type", "x": 1}),
                      msgpack.packb({"t": "hello", "versions": "not-a-list"}),
                      msgpack.packb([1, 2, 3])):
            ws = await _connect(server)
            await ws.send(frame)
            out.append(await _closed_with(ws))
        ws = await _connect(server)
        await ws.send("a text frame")
        out.append(await _closed_with(ws))
        ws = await _connect(server)
        try:
            await ws.send(b"\x00" * (300 * 1024))  # over the 256 KiB frame limit
        except websockets.ConnectionClosed:
            pass
        out.append(await _closed_with(ws))
        # authenticated, then an unknown message type
        ws = await _login(server, instance_id, key)
        await ws.send(msgpack.packb({"t": "channel-data-of-the-future", "blob": b"x"}))
        out.append(await _closed_with(ws))
        return out

    with bystander(server):
        results = asyncio.run(attacks())
        _online(server, agent)
    for code, _errors in results:
        assert code is not None and code != 1000, results
    assert any(e.code for _, errors in results for e in errors)
    assert server.cli_json("run", agent.instance_id, "--script", "echo alive")[
        "Results"][0]["Output"] == "alive\n"


def test_half_open_and_slow_connections_do_not_block_others(fleet):
    server, agent = fleet
    raw: list[socket.socket] = []
    tls: list[ssl.SSLSocket] = []
    try:
        with bystander(server):
            for _ in range(20):  # TCP only: no TLS handshake ever
                raw.append(socket.create_connection(("127.0.0.1", server.port)))
            for _ in range(10):  # TLS done, HTTP request never finished
                s = _ssl(server).wrap_socket(socket.create_connection(
                    ("127.0.0.1", server.port)), server_hostname="127.0.0.1")
                s.sendall(b"GET /agent/v1/connect HTTP/1.1\r\nHost: x\r\nUpgrade: websoc")
                tls.append(s)

            async def silent() -> int | None:
                ws = await _connect(server)  # WebSocket open, never says hello
                code, _ = await _closed_with(ws)
                return code

            async def silent_many() -> list[int | None]:
                return await asyncio.gather(*(silent() for _ in range(5)))

            codes = asyncio.run(silent_many())  # ends when the handshake timeout cuts them
            _online(server, agent)
        assert all(c is not None and c != 1000 for c in codes), codes
    finally:
        for s in raw + tls:
            s.close()
    assert server.healthy()


def test_heartbeat_flood(fleet):
    server, agent = fleet
    instance_id, key = _register(server)

    async def flood() -> int:
        ws = await _login(server, instance_id, key)
        acks = 0
        try:
            for seq in range(1000):
                await ws.send(encode(Heartbeat(seq, time.time())))
            while acks < 1000:
                message = decode(await asyncio.wait_for(ws.recv(), 60))
                if isinstance(message, HeartbeatAck):
                    acks += 1
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        await ws.close()
        return acks

    with bystander(server):
        asyncio.run(flood())
        _online(server, agent)
    wait_for(lambda: server.online(agent.instance_id), 30, "the real agent online")
    assert "Traceback" not in server.log()


def test_the_agent_refuses_a_server_outside_its_pinned_ca(tmp_path, fleet):
    """A copy of the real agent's state pointed at an impostor server (its own CA, a valid
    certificate for 127.0.0.1) never completes a TLS handshake with it."""
    server, agent = fleet
    impostor = Server(Path(tmp_path) / "impostor").start()
    state_dir = Path(tmp_path) / "agent-copy"
    shutil.copytree(agent.state_dir, state_dir)
    state = json.loads((state_dir / "agent.json").read_text())
    (state_dir / "agent.json").write_text(json.dumps({**state, "Server": impostor.url}))
    log_path = Path(tmp_path) / "agent-copy.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(BIN / "porthole-agent"), "run", "--state-dir",
                                 str(state_dir)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "certificate" in log_path.read_text().lower(), 60,
                 "the agent to report the untrusted certificate")
        assert "AgentConnect" not in impostor.log()
        assert impostor.get_json("/healthz")["AgentsConnected"] == 0
    finally:
        proc.terminate()
        proc.wait(15)
        impostor.stop()
