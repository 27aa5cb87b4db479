"""Agent gateway: registration and the agents' WebSocket (handshake, heartbeats, results)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proto import ProtocolError
from proto.handshake import NONCE_SIZE, auth_payload, negotiate
from proto.ids import is_instance_id, new_instance_id
from proto.messages import (
    MAX_FRAME_SIZE,
    PROTOCOL_VERSIONS,
    Auth,
    Challenge,
    Error,
    Heartbeat,
    HeartbeatAck,
    Hello,
    Message,
    Welcome,
    decode,
    encode,
)
from server.batching import PresenceWriter, instance_lookup
from server.bus import Bus
from server.config import ServerConfig
from server.errors import ApiError
from server.metrics import AUTH_FAILURES, FRAME_ERRORS
from server.storage import ActivationError, Repository

log = logging.getLogger("porthole.gateway")

HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKES = 200
"""Agent handshakes in progress at once; more wait up to ADMISSION_WAIT, then get a 503."""
ADMISSION_WAIT = 5.0
ROUTE_CACHE_SECONDS = 2.0
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_POLICY = 1008


class AgentLink:
    """One authenticated agent connection."""

    def __init__(self, instance_id: str, region: str, ws: web.WebSocketResponse) -> None:
        self.instance_id = instance_id
        self.region = region
        self.ws = ws
        self.connected_at = time.time()
        self.last_heartbeat = self.connected_at
        self._send_lock = asyncio.Lock()

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message))

    async def send_raw(self, frame: bytes) -> None:
        async with self._send_lock:
            await self.ws.send_bytes(frame)


class RemoteLink:
    """An agent held by another replica: frames go there over the bus."""

    def __init__(self, instance_id: str, region: str, replica: str, bus: Bus) -> None:
        self.instance_id = instance_id
        self.region = region
        self.replica = replica
        self.bus = bus

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message))

    async def send_raw(self, frame: bytes) -> None:
        await self.bus.to_agent(self.replica, self.instance_id, frame)


Link = AgentLink | RemoteLink

MessageHandler = Callable[[AgentLink, Any, bytes], Awaitable[None]]
"""Handles one kind of agent message: (the agent's link, the message, its raw frame)."""
DisconnectHandler = Callable[[str], Awaitable[None]]


class Gateway:
    def __init__(self, config: ServerConfig, repo: Repository) -> None:
        self.config = config
        self.repo = repo
        self.links: dict[str, AgentLink] = {}
        self.handlers: dict[type[Message], MessageHandler] = {}
        self.disconnect_handlers: list[DisconnectHandler] = []
        self.connect_handlers: list[Callable[[AgentLink], Awaitable[None]]] = []
        """Called after an agent authenticated (e.g. to deliver what waited for it)."""
        self._sweeper: asyncio.Task[None] | None = None
        self.replica = config.replica
        self.presence = PresenceWriter(repo, config.replica)
        self.instances = instance_lookup(repo)
        self._handshakes = asyncio.Semaphore(MAX_HANDSHAKES)
        self.bus: Bus | None = None
        """Set when this server is one of several replicas (see server.bus)."""
        self._remote: dict[str, tuple[RemoteLink | None, float]] = {}
        """Recent answers of route() for agents not held here, with when they expire."""

    def attach_bus(self, bus: Bus) -> None:
        self.bus = bus
        bus.on_down = self._from_bus

    def forget_route(self, instance_id: str) -> None:
        self._remote.pop(instance_id, None)

    async def _from_bus(self, instance_id: str, frame: bytes) -> None:
        """A frame another replica sent to one of our agents (dropped if it left us: the
        channel's resume replays it)."""
        link = self.links.get(instance_id)
        if link is not None:
            try:
                await link.send_raw(frame)
            except (ConnectionError, RuntimeError):
                pass

    def live_other(self, replica: str) -> bool:
        """Whether ``replica`` names another replica that is alive, so that what the
        database shows on it can be reached through it."""
        return self.bus is not None and bool(replica) and replica != self.replica \
            and not self.bus.dead_replicas({replica})

    async def route(self, instance_id: str) -> Link | None:
        """The way to an agent: its connection here, or the replica that holds it."""
        link = self.links.get(instance_id)
        if link is not None or self.bus is None:
            return link
        now = time.monotonic()
        cached = self._remote.get(instance_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        row = await self.repo.instance(instance_id)
        remote = None
        if row is not None and row["connected"] and self.live_other(row["replica"]):
            remote = RemoteLink(instance_id, row["region"], row["replica"], self.bus)
        if len(self._remote) > 100_000:
            self._remote.clear()
        self._remote[instance_id] = (remote, now + ROUTE_CACHE_SECONDS)
        return remote

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep())
        self.presence.start()

    async def _sweep(self) -> None:
        """Drop agents whose heartbeats stopped, even if their TCP connection looks alive."""
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            if self.bus is not None:
                dead = self.bus.dead_replicas(await self.repo.connected_replicas())
                if dead:
                    log.warning("replica(s) %s stopped announcing themselves; their agents "
                                "are offline until they dial in again", ", ".join(sorted(dead)))
                    await self.repo.disconnect_replicas(dead)
            cutoff = time.time() - self.config.agent_offline_after
            for link in list(self.links.values()):
                if link.last_heartbeat < cutoff:
                    log.warning("agent %s sent no heartbeat for %.0f s; dropping it",
                                link.instance_id, time.time() - link.last_heartbeat)
                    await link.ws.close(code=CLOSE_POLICY, message=b"heartbeat timeout")

    def link(self, instance_id: str) -> AgentLink | None:
        return self.links.get(instance_id)

    async def register(self, request: web.Request) -> web.Response:
        """POST /agent/v1/register: trade an activation for an instance id."""
        body = await _json_body(request)
        try:
            public_key = base64.b64decode(str(body.get("PublicKey", "")), validate=True)
            Ed25519PublicKey.from_public_bytes(public_key)
        except (binascii.Error, ValueError):
            raise ApiError(
                400, "InvalidParameter.PublicKey", "PublicKey must be a base64 Ed25519 key"
            ) from None
        fields = {k: body.get(k) for k in ("ActivationId", "ActivationCode", "Region")}
        for name, value in fields.items():
            if not isinstance(value, str) or not value:
                raise ApiError(400, f"MissingParameter.{name}", f"{name} is required")
        instance_id = new_instance_id()
        info = {
            "hostname": str(body.get("Hostname", "")),
            "platform": str(body.get("Platform", "")),
            "os_name": str(body.get("OsName", "")),
            "agent_version": str(body.get("AgentVersion", "")),
        }
        try:
            await self.repo.register_instance(
                fields["ActivationId"], fields["ActivationCode"], fields["Region"],
                instance_id, public_key, info,
            )
        except ActivationError as exc:
            await self.repo.audit(
                principal=f"activation/{fields['ActivationId']}"[:128], action="RegisterInstance",
                source_ip=request.remote or "", outcome="Denied", detail=str(exc),
            )
            raise ApiError(403, exc.code, str(exc)) from None
        await self.repo.audit(
            principal=f"activation/{fields['ActivationId']}", action="RegisterInstance",
            resource=self.instance_arn(fields["Region"], instance_id),
            source_ip=request.remote or "", outcome="Allowed",
        )
        log.info("registered %s in %s from %s", instance_id, fields["Region"], request.remote)
        return web.json_response({"InstanceId": instance_id})

    def instance_arn(self, region: str, instance_id: str) -> str:
        return f"acs:ecs:{region}:{self.config.account_id}:instance/{instance_id}"

    async def connect(self, request: web.Request) -> web.StreamResponse:
        """GET /agent/v1/connect: one agent's WebSocket for its whole life."""
        if not await self._admit():
            return web.Response(status=503, headers={"Retry-After": "10"},
                                text="too many agents are connecting at once; retry later")
        ws = web.WebSocketResponse(
            heartbeat=self.config.heartbeat_interval, compress=False, max_msg_size=MAX_FRAME_SIZE
        )
        try:
            await ws.prepare(request)
        except BaseException:
            self._handshakes.release()
            raise
        peer = request.remote or "?"
        link: AgentLink | None = None
        try:
            try:
                link = await asyncio.wait_for(self._handshake(ws, peer), HANDSHAKE_TIMEOUT)
            finally:
                self._handshakes.release()
            if link is None:
                return ws
            # Not under the handshake's timeout: the agent is in, however busy the server is.
            for on_connect in self.connect_handlers:
                await on_connect(link)
            await self._serve(link)
        except ProtocolError as exc:
            log.warning("agent %s from %s: protocol error: %s; closing its connection",
                        link.instance_id if link else "(unauthenticated)", peer, exc)
            FRAME_ERRORS.labels("agent", exc.code).inc()
            await _send_error(ws, exc.code, str(exc))
            await ws.close(code=CLOSE_PROTOCOL_ERROR, message=exc.code.encode()[:120])
        except TimeoutError:
            log.warning("agent from %s: handshake timed out", peer)
            await ws.close(code=CLOSE_POLICY, message=b"handshake timeout")
        finally:
            if link is not None and self.links.get(link.instance_id) is link:
                del self.links[link.instance_id]
                self.presence.disconnected(link.instance_id)
                if self.bus is not None:
                    await self.bus.gone(link.instance_id)
                for on_disconnect in self.disconnect_handlers:
                    await on_disconnect(link.instance_id)
                log.info("agent %s disconnected", link.instance_id)
        return ws

    async def _admit(self) -> bool:
        """A place among the handshakes in progress, waited for a little. A crowd of agents
        dialling at once (after a restart) is served a bounded number at a time, each fast,
        the rest told to come back (they back off with jitter), instead of all progressing
        so slowly together that every handshake times out and is tried again."""
        try:
            async with asyncio.timeout(ADMISSION_WAIT):
                await self._handshakes.acquire()
        except TimeoutError:
            return False
        return True

    async def _receive(self, ws: web.WebSocketResponse) -> Message | None:
        frame = await self._receive_raw(ws)
        return None if frame is None else decode(frame)

    async def _receive_raw(self, ws: web.WebSocketResponse) -> bytes | None:
        msg = await ws.receive()
        if msg.type == WSMsgType.BINARY:
            return msg.data
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return None
        raise ProtocolError(f"expected a binary frame, got {msg.type.name}", "MalformedFrame")

    async def _handshake(self, ws: web.WebSocketResponse, peer: str) -> AgentLink | None:
        hello = await self._receive(ws)
        if hello is None:
            return None
        if not isinstance(hello, Hello):
            raise ProtocolError(f"expected hello, got {hello.TYPE}", "UnexpectedMessage")
        version = negotiate(PROTOCOL_VERSIONS, hello.versions)
        instance = await self.instances.get(hello.instance_id) if is_instance_id(
            hello.instance_id) else None
        if instance is None:
            return await self._refuse(ws, peer, hello.instance_id, "InstanceNotFound",
                                      f"instance {hello.instance_id} is not registered")
        if instance["deregistered_at"] is not None:
            return await self._refuse(
                ws, peer, hello.instance_id, "InstanceDeregistered",
                f"instance {hello.instance_id} was deregistered; register this agent again "
                "with a new activation",
            )
        nonce = os.urandom(NONCE_SIZE)
        await ws.send_bytes(encode(Challenge(version, nonce)))
        auth = await self._receive(ws)
        if auth is None:
            return None
        if not isinstance(auth, Auth):
            raise ProtocolError(f"expected auth, got {auth.TYPE}", "UnexpectedMessage")
        try:
            Ed25519PublicKey.from_public_bytes(instance["public_key"]).verify(
                auth.signature, auth_payload(hello.instance_id, nonce, version)
            )
        except InvalidSignature:
            return await self._refuse(ws, peer, hello.instance_id, "AuthFailed",
                                      "signature does not match the instance's registered key")
        link = AgentLink(hello.instance_id, instance["region"], ws)
        old = self.links.get(link.instance_id)
        self.links[link.instance_id] = link
        if old is not None:
            log.info("agent %s reconnected; closing its previous connection", link.instance_id)
            await old.ws.close(code=CLOSE_POLICY, message=b"replaced by a newer connection")
        report = {
            "hostname": hello.hostname[:256], "platform": hello.platform[:64],
            "os_name": hello.os_name[:256], "agent_version": hello.agent_version[:64],
        }
        self.presence.connected(link.instance_id, {  # written soon, in a batch
            k: v for k, v in report.items() if instance[k] != v})
        await link.send(Welcome(self.config.heartbeat_interval, time.time()))
        log.info("agent %s connected from %s (protocol %d)", link.instance_id, peer, version)
        return link

    async def _refuse(
        self, ws: web.WebSocketResponse, peer: str, instance_id: str, code: str, message: str
    ) -> None:
        log.warning("agent %s from %s refused: %s", instance_id[:40], peer, message)
        AUTH_FAILURES.labels("agent", code).inc()
        await self.repo.audit(principal=f"instance/{instance_id[:40]}", action="AgentConnect",
                              source_ip=peer, outcome="Denied", detail=message)
        await _send_error(ws, code, message)
        await ws.close(code=CLOSE_POLICY, message=code.encode())

    async def _serve(self, link: AgentLink) -> None:
        while True:
            frame = await self._receive_raw(link.ws)
            if frame is None:
                return
            message = decode(frame)
            handler = self.handlers.get(type(message))
            if handler is not None:
                await handler(link, message, frame)
            elif isinstance(message, Heartbeat):
                link.last_heartbeat = time.time()
                await link.send(HeartbeatAck(message.seq))
                self.presence.heartbeat(link.instance_id)
            elif isinstance(message, Error):
                log.warning("agent %s reports %s: %s", link.instance_id, message.code,
                            message.message)
            else:
                raise ProtocolError(f"unexpected {message.TYPE} from an agent",
                                    "UnexpectedMessage")

    def count_by_region(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for link in self.links.values():
            counts[link.region] = counts.get(link.region, 0) + 1
        return counts

    async def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        # All at once: one by one, each waiting for its agent's close frame, ten thousand
        # agents would take longer than a service manager waits for a stop.
        await asyncio.gather(*(link.ws.close(code=1012, message=b"server restarting")
                               for link in list(self.links.values())), return_exceptions=True)
        deadline = time.monotonic() + 2
        while self.links and time.monotonic() < deadline:  # their handlers finishing
            await asyncio.sleep(0.05)
        await self.presence.close()


async def _send_error(ws: web.WebSocketResponse, code: str, message: str) -> None:
    if not ws.closed:
        try:
            await ws.send_bytes(encode(Error(code, message[:1000])))
        except (ConnectionError, RuntimeError):
            pass


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "InvalidJSON", "request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidJSON", "request body must be a JSON object")
    return body
