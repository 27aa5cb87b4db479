"""The aiohttp application: routes, services, TLS, and the serve loop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

import server.api_audit  # noqa: F401
import server.api_commands  # noqa: F401  (each api_* module registers its actions)
import server.api_iam  # noqa: F401
import server.api_instances  # noqa: F401
import server.api_sessions  # noqa: F401
from server import __version__
from server.api import dispatch, error_response, openapi_document
from server.auth import authenticate
from server.authz import authorize
from server.bus import Bus, BusError
from server.commands import CommandService
from server.config import ServerConfig
from server.errors import ApiError
from server.gateway import Gateway
from server.metrics import REGISTRY, LiveCollector
from server.ratelimit import request_limits
from server.secrets import install_keyring
from server.sessions import SessionManager
from server.storage import Repository
from server.tlsbuffers import share_tls_read_buffers

log = logging.getLogger("porthole.server")

DRAIN_TIMEOUT = 10.0
"""Seconds a stopping server waits for API calls in flight."""


@dataclass
class Services:
    config: ServerConfig
    repo: Repository
    gateway: Gateway
    commands: CommandService
    sessions: SessionManager


@web.middleware
async def _errors(request: web.Request, handler):  # type: ignore[no-untyped-def]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, "")


async def _health(request: web.Request) -> web.Response:
    services: Services = request.app["services"]
    return web.json_response({
        "Status": "ok", "Version": __version__, "AgentsConnected": len(services.gateway.links),
    })


async def _session_stream(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/sessions/{sid}/stream: the session owner's WebSocket (signed request)."""
    services: Services = request.app["services"]
    principal = await authenticate(request, b"", services.repo)
    sid = request.match_info["sid"]
    session = services.sessions.sessions.get(sid)
    if session is None:
        row = await services.repo.session(sid)
        state = f"has ended ({row['end_reason']})" if row else "does not exist"
        raise ApiError(404, "InvalidSessionId.NotFound", f"session {sid[:64]} {state}")
    if session.owner != principal.name:
        raise ApiError(403, "Forbidden.SessionOwner",
                       f"session {sid} belongs to another user")
    return await services.sessions.stream(request, session)


async def _session_recording(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/sessions/{sid}/recording: the asciicast v2 recording."""
    services: Services = request.app["services"]
    principal = await authenticate(request, b"", services.repo)
    row = await services.repo.session(request.match_info["sid"])
    if row is None or not row["recording"]:
        raise ApiError(404, "InvalidSessionId.NotFound",
                       f"session {request.match_info['sid'][:64]} not found")
    authorize(principal, "ecs:GetSessionRecording",
              services.gateway.instance_arn(row["region"], row["instance_id"]))
    path = services.config.path(row["recording"])
    if not path.exists():
        home = row["replica"] if row["replica"] != services.gateway.replica else ""
        raise ApiError(404, "RecordingNotFound", f"no recording of {row['id']} on this server"
                       + (f"; it is kept by replica {home}: ask that replica" if home else ""))
    return web.FileResponse(path, headers={"Content-Type": "application/x-asciicast"})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(__version__))


def build_app(services: Services) -> web.Application:
    app = web.Application(middlewares=[_errors, request_limits],
                          client_max_size=1024 * 1024)
    app["services"] = services
    app.router.add_get("/healthz", _health)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/metrics", make_aiohttp_handler(REGISTRY))
    app.router.add_post("/api/v1/{action}", dispatch)
    app.router.add_get("/api/v1/sessions/{sid}/stream", _session_stream)
    app.router.add_get("/api/v1/sessions/{sid}/recording", _session_recording)
    app.router.add_post("/agent/v1/register", services.gateway.register)
    app.router.add_get("/agent/v1/connect", services.gateway.connect)
    return app


def _reload_certificate(config: ServerConfig, tls: ssl.SSLContext) -> None:
    """SIGHUP: new handshakes use the certificate on disk now; open connections go on."""
    try:
        tls.load_cert_chain(config.path(config.tls_cert), config.path(config.tls_key))
    except (OSError, ssl.SSLError) as exc:
        log.error("SIGHUP: keeping the current certificate; cannot load the new one: %s", exc)
        return
    log.info("SIGHUP: reloaded the TLS certificate %s", config.path(config.tls_cert))


def tls_context(config: ServerConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(config.path(config.tls_cert), config.path(config.tls_key))
    return ctx


async def open_services(config: ServerConfig) -> Services:
    repo = await Repository.open(config.db_url)
    await install_keyring(config.data_dir, repo)
    await repo.ensure_regions(config.regions)
    gateway = Gateway(config, repo)
    if config.nats_url:
        bus = Bus(config.nats_url, config.nats_subject_prefix, config.replica)
        try:
            await bus.start()
        except BusError:
            await repo.close()
            raise
        gateway.attach_bus(bus)
    return Services(config, repo, gateway, CommandService(repo, gateway),
                    SessionManager(config, repo, gateway))


async def serve(config: ServerConfig) -> None:
    services = await open_services(config)
    await services.repo.reset_connections(config.replica)
    services.gateway.start()
    services.commands.start()
    await services.sessions.start()
    app = build_app(services)
    collector = LiveCollector(services.gateway.count_by_region,
                              services.sessions.count_by_kind)
    REGISTRY.register(collector)
    counting = asyncio.create_task(collector.refresh_invocations(services.repo.engine))
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=DRAIN_TIMEOUT)
    await runner.setup()
    host, port = config.listen_address()
    share_tls_read_buffers()  # 256 KiB less resident memory per connection
    tls = tls_context(config)
    site = web.TCPSite(runner, host, port, ssl_context=tls, reuse_address=True)
    await site.start()
    log.info("porthole-server %s listening on https://%s:%d (data dir %s)",
             __version__, host, port, config.data_dir)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_certificate, config, tls)
    await stop.wait()
    log.info("shutting down: no new connections; agents and operators will reconnect")
    await site.stop()
    counting.cancel()
    REGISTRY.unregister(collector)
    await services.sessions.stop()
    await services.commands.stop()
    await services.gateway.close_all()
    await runner.cleanup()
    if services.gateway.bus is not None:
        await services.gateway.bus.stop()
    await services.repo.close()
