"""The agent's connection: identity, reconnects, refusals, and hostile frames."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import time

import pytest
import websockets
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.connection import BACKOFF_CAP, backoff_delay
from proto.handshake import auth_payload
from proto.messages import Auth, Challenge, Error, Heartbeat, HeartbeatAck, Hello, decode, encode
from tests.harness import Server, register, wait_for


def test_agent_killed_and_restarted_comes_back(server, make_agent):
    agent = make_agent()
    agent.stop(signal.SIGKILL)
    wait_for(lambda: not server.online(agent.instance_id), 30, "offline after SIGKILL")
    agent.start()
    rc, reply = server.run_json(agent.instance_id, "--script", "echo back")
    assert rc == 0 and reply["Results"][0]["Output"] == "back\n"


@pytest.mark.slow
def test_server_restart_every_agent_reconnects(server, make_agent):
    agents = [make_agent() for _ in range(3)]
    server.stop()
    time.sleep(1)
    server.start()
    for a in agents:
        wait_for(lambda a=a: server.online(a.instance_id), 60, f"{a.instance_id} back")
    ids = [a.instance_id for a in agents]
    rc, reply = server.run_json(*ids, "--script", "echo ok")
    assert rc == 0, reply
    assert [r["Output"] for r in reply["Results"]] == ["ok\n"] * 3


def test_backoff_is_full_jitter_and_capped():
    for attempt in range(40):
        ceiling = min(BACKOFF_CAP, 2**attempt)
        samples = [backoff_delay(attempt) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
    late = [backoff_delay(30) for _ in range(2000)]
    assert max(late) <= 60 and max(late) > 50 and min(late) < 10  # spread, not a herd


def test_deregistered_agent_stops_retrying_with_a_clear_log_line(server, make_agent):
    agent = make_agent()
    server.cli("instances", "deregister", agent.instance_id)
    assert agent.proc.wait(30) == 3
    assert "was deregistered" in agent.log()
    assert server.instance(agent.instance_id) is None


def test_activation_usage_limit_and_expiry(server, tmp_path):
    act = server.activation(count=1)
    assert register(server, tmp_path / "a1", act).returncode == 0
    second = register(server, tmp_path / "a2", act)
    assert second.returncode != 0
    assert "used 1 time(s), its limit" in second.stderr and "Traceback" not in second.stderr
    short = server.activation(count=5, expires="1s")
    time.sleep(1.5)
    late = register(server, tmp_path / "a3", short)
    assert late.returncode != 0 and "has expired" in late.stderr
    wrong = register(server, tmp_path / "a4", {**act, "ActivationCode": "wrong"})
    assert wrong.returncode != 0 and "wrong" in wrong.stderr
    other_region = register(server, tmp_path / "a5", server.activation(), region="elsewhere")
    assert other_region.returncode != 0 and "not elsewhere" in other_region.stderr


# --- raw WebSocket peers -------------------------------------------------------------------


def _ws(server):
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    url = server.url.replace("https", "wss") + "/agent/v1/connect"
    return websockets.connect(url, ssl=ctx, compression=None)


async def _recv_error(ws) -> Error:
    message = decode(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(message, Error), message
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    return message


def _register_key(server, tmp_path) -> tuple[str, Ed25519PrivateKey]:
    """Register an instance with a key this test holds (as the agent would)."""
    import urllib.request

    key = Ed25519PrivateKey.generate()
    act = server.activation(count=1)
    body = json.dumps({
        "ActivationId": act["ActivationId"], "ActivationCode": act["ActivationCode"],
        "Region": "local",
        "PublicKey": base64.b64encode(key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw)).decode(),
    }).encode()
    req = urllib.request.Request(server.url + "/agent/v1/register", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    with urllib.request.urlopen(req, context=ctx) as r:
        return json.loads(r.read())["InstanceId"], key


async def _handshake(ws, instance_id: str, key: Ed25519PrivateKey) -> None:
    await ws.send(encode(Hello([1], instance_id, "test")))
    challenge = decode(await ws.recv())
    assert isinstance(challenge, Challenge)
    await ws.send(encode(Auth(key.sign(auth_payload(instance_id, challenge.nonce,
                                                    challenge.version)))))
    assert decode(await ws.recv()).TYPE == "welcome"


async def test_claiming_another_instance_without_its_key_is_refused(server, make_agent):
    victim = make_agent()
    async with _ws(server) as ws:
        await ws.send(encode(Hello([1], victim.instance_id, "evil")))
        challenge = decode(await ws.recv())
        assert isinstance(challenge, Challenge)
        forged = Ed25519PrivateKey.generate().sign(
            auth_payload(victim.instance_id, challenge.nonce, challenge.version))
        await ws.send(encode(Auth(forged)))
        error = await _recv_error(ws)
    assert error.code == "AuthFailed"
    assert await asyncio.to_thread(server.online, victim.instance_id)
    assert "refused: signature does not match" in server.log()


async def test_replayed_signature_from_an_old_challenge_is_refused(server, tmp_path):
    instance_id, key = _register_key(server, tmp_path)
    async with _ws(server) as ws:
        await ws.send(encode(Hello([1], instance_id, "t")))
        old = decode(await ws.recv())
        signature = key.sign(auth_payload(instance_id, old.nonce, old.version))
    async with _ws(server) as ws:  # new connection, new nonce: the old signature is useless
        await ws.send(encode(Hello([1], instance_id, "t")))
        decode(await ws.recv())
        await ws.send(encode(Auth(signature)))
        assert (await _recv_error(ws)).code == "AuthFailed"


async def test_unsupported_version_names_both_versions(server):
    async with _ws(server) as ws:
        await ws.send(encode(Hello([7, 8], "mi-00000000000000000", "future")))
        error = await _recv_error(ws)
    assert error.code == "UnsupportedVersion"
    assert "peer speaks version 7, 8" in error.message
    assert "this side speaks version 1" in error.message


@pytest.mark.parametrize("garbage", [b"\xc1\xc1\xc1", b"\x93\x01\x02\x03",
                                     b"\x81\xa1t\xa3bad", b""], ids=["invalid", "array",
                                                                    "unknown-type", "empty"])
async def test_malformed_frame_closes_only_that_connection(server, make_agent, tmp_path,
                                                            garbage):
    bystander = make_agent()
    instance_id, key = _register_key(server, tmp_path)
    async with _ws(server) as ws:
        await _handshake(ws, instance_id, key)
        await ws.send(encode(Heartbeat(1, time.time())))
        assert decode(await ws.recv()) == HeartbeatAck(1)
        await ws.send(garbage)
        error = await _recv_error(ws)
        assert error.code == "MalformedFrame"
        assert ws.close_code == 1002
    rc, reply = await asyncio.to_thread(server.run_json, bystander.instance_id, "--script",
                                        "echo still here")
    assert rc == 0 and reply["Results"][0]["Output"] == "still here\n"
    assert server.proc.poll() is None


async def test_oversized_and_text_frames_are_refused(server, tmp_path):
    instance_id, key = _register_key(server, tmp_path)
    async with _ws(server) as ws:
        await _handshake(ws, instance_id, key)
        await ws.send("a text frame")
        assert (await _recv_error(ws)).code == "MalformedFrame"
    async with _ws(server) as ws:
        await _handshake(ws, instance_id, key)
        await ws.send(b"\x00" * (300 * 1024))
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009


async def test_an_agent_that_stops_heartbeating_is_dropped(tmp_path):
    srv = Server(tmp_path, heartbeat_interval=0.5, agent_offline_after=2).start()
    try:
        instance_id, key = _register_key(srv, tmp_path)
        async with _ws(srv) as ws:
            await _handshake(ws, instance_id, key)
            assert await asyncio.to_thread(srv.online, instance_id)
            started = time.monotonic()
            with pytest.raises(websockets.ConnectionClosed):
                while True:  # WebSocket pings are answered, but no heartbeat is sent
                    await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_reason == "heartbeat timeout"
            assert time.monotonic() - started < 10
        assert not await asyncio.to_thread(srv.online, instance_id)
    finally:
        srv.stop()
