"""Operator API: the action registry, request dispatch, audit, and the OpenAPI document.

Every action is ``POST /api/v1/{Action}`` with a JSON object body, in the style of the
Cloud Assistant RPC API. Each action declares its parameters once; validation and the
OpenAPI document both come from that declaration.
"""

from __future__ import annotations

import datetime
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proto.ids import is_instance_id
from server.auth import authenticate
from server.authz import Principal, authorize
from server.errors import ApiError, invalid_parameter
from server.metrics import AUTH_FAILURES

log = logging.getLogger("porthole.api")

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    description: str
    required: bool = False
    default: Any = None
    items: str = "string"
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] = ()
    max_length: int | None = None

    def check(self, value: Any) -> Any:
        if not isinstance(value, _JSON_TYPES[self.type]) or (
            self.type in ("integer", "number") and isinstance(value, bool)
        ):
            raise invalid_parameter(self.name, f"must be a JSON {self.type}")
        if self.type == "array" and not all(
            isinstance(v, _JSON_TYPES[self.items]) for v in value
        ):
            raise invalid_parameter(self.name, f"must be an array of {self.items}s")
        strings = value if self.type == "array" else [value] if self.type == "string" else []
        if any("\x00" in v for v in strings if isinstance(v, str)):
            raise invalid_parameter(self.name, "must not contain NUL characters")
        if self.max_length is not None and len(value) > self.max_length:
            raise invalid_parameter(self.name, f"must be at most {self.max_length} characters")
        if self.minimum is not None and value < self.minimum:
            raise invalid_parameter(self.name, f"must be at least {self.minimum:g}")
        if self.maximum is not None and value > self.maximum:
            raise invalid_parameter(self.name, f"must be at most {self.maximum:g}")
        if self.enum and value not in self.enum:
            raise invalid_parameter(self.name, f"must be one of {', '.join(self.enum)}")
        return value


@dataclass
class Context:
    """What a handler gets besides its parameters."""

    request: web.Request
    principal: Principal
    request_id: str
    resources: list[str] = field(default_factory=list)

    @property
    def services(self) -> Any:
        return self.request.app["services"]


Handler = Callable[[Context, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Action:
    name: str
    ram_action: str
    description: str
    params: tuple[Param, ...]
    handler: Handler
    mutating: bool


ACTIONS: dict[str, Action] = {}


def action(
    name: str, ram_action: str, description: str, *params: Param, mutating: bool = False
) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ACTIONS[name] = Action(name, ram_action, description, params, handler, mutating)
        return handler

    return register


def parse_params(spec: Action, body: dict[str, Any]) -> dict[str, Any]:
    known = {p.name: p for p in spec.params}
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise ApiError(
            400, "InvalidParameter", f"{spec.name} has no parameter {', '.join(unknown)}"
        )
    params: dict[str, Any] = {}
    for p in spec.params:
        if body.get(p.name) is None:
            if p.required:
                raise ApiError(400, f"MissingParameter.{p.name}", f"{p.name} is required")
            params[p.name] = p.default
        else:
            params[p.name] = p.check(body[p.name])
    return params


def error_response(status: int, code: str, message: str, request_id: str) -> web.Response:
    return web.json_response(
        {"Code": code, "Message": message, "RequestId": request_id}, status=status
    )


async def dispatch(request: web.Request) -> web.Response:
    """POST /api/v1/{action}: authenticate, validate, run, audit."""
    services = request.app["services"]
    request_id = str(uuid.uuid4())
    name = request.match_info["action"]
    spec = ACTIONS.get(name)
    principal: Principal | None = None
    ctx: Context | None = None
    outcome, detail = "Allowed", ""
    try:
        body_bytes = await request.read()
        principal = await authenticate(request, body_bytes, services.repo)
        if spec is None:
            raise ApiError(404, "InvalidAction", f"there is no API action {name[:64]!r}")
        try:
            body = json.loads(body_bytes or b"{}")
        except ValueError:
            raise ApiError(400, "InvalidJSON", "request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "InvalidJSON", "request body must be a JSON object")
        ctx = Context(request, principal, request_id)
        result = await spec.handler(ctx, parse_params(spec, body))
        return web.json_response({"RequestId": request_id, **result})
    except ApiError as exc:
        outcome = "Denied" if exc.status in (401, 403) else "Error"
        if exc.status == 401:
            AUTH_FAILURES.labels("operator", exc.code).inc()
        detail = f"{exc.code}: {exc.message}"
        return error_response(exc.status, exc.code, exc.message, request_id)
    except Exception:
        log.exception("request %s (%s) failed", request_id, name)
        outcome, detail = "Error", "InternalError"
        return error_response(
            500, "InternalError", f"internal error; quote request id {request_id}", request_id
        )
    finally:
        await services.repo.audit(
            request_id=request_id,
            principal=principal.arn if principal else "anonymous",
            action=spec.ram_action if spec else name[:128],
            resource=",".join(ctx.resources)[:512] if ctx else "",
            source_ip=request.remote or "",
            outcome=outcome,
            detail=detail[:2000],
        )


def openapi_document(version: str) -> dict[str, Any]:
    def schema(p: Param) -> dict[str, Any]:
        s: dict[str, Any] = {"type": p.type, "description": p.description}
        if p.type == "array":
            s["items"] = {"type": p.items}
        if p.default is not None:
            s["default"] = p.default
        if p.minimum is not None:
            s["minimum"] = p.minimum
        if p.maximum is not None:
            s["maximum"] = p.maximum
        if p.enum:
            s["enum"] = list(p.enum)
        if p.max_length is not None:
            s["maxLength"] = p.max_length
        return s

    error_ref = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for spec in sorted(ACTIONS.values(), key=lambda a: a.name):
        paths[f"/api/v1/{spec.name}"] = {"post": {
            "operationId": spec.name,
            "summary": spec.description,
            "x-ram-action": spec.ram_action,
            "security": [{"AccessKey": [], "Timestamp": [], "Nonce": [], "Signature": []}],
            "requestBody": {"required": True, "content": {"application/json": {"schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {p.name: schema(p) for p in spec.params},
                "required": [p.name for p in spec.params if p.required],
            }}}},
            "responses": {
                "200": {"description": "Success", "content": {"application/json": {
                    "schema": {"type": "object", "properties": {"RequestId": {"type": "string"}}}
                }}},
                **{
                    str(code): {"description": text, "content": {
                        "application/json": {"schema": error_ref}}}
                    for code, text in [(400, "Invalid request"), (401, "Not authenticated"),
                                       (403, "Refused by policy"), (404, "Not found")]
                },
            },
        }}
    header = {"type": "apiKey", "in": "header"}
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "Porthole operator API",
            "version": version,
            "description": "Requests are signed: HMAC-SHA256 of the string to sign "
            "(algorithm, method, path, sorted query, SHA-256 of the body, timestamp, nonce, "
            "access key id, joined by newlines) with the access key secret, hex-encoded.",
        },
        "paths": {
            "/healthz": {"get": {"operationId": "Health", "summary": "Liveness and readiness",
                                 "security": [], "responses": {"200": {"description": "OK"}}}},
            **paths,
        },
        "components": {
            "securitySchemes": {
                "AccessKey": {**header, "name": "X-Porthole-Access-Key"},
                "Timestamp": {**header, "name": "X-Porthole-Timestamp"},
                "Nonce": {**header, "name": "X-Porthole-Nonce"},
                "Signature": {**header, "name": "X-Porthole-Signature"},
            },
            "schemas": {"Error": {"type": "object", "required": ["Code", "Message", "RequestId"],
                                  "properties": {"Code": {"type": "string"},
                                                 "Message": {"type": "string"},
                                                 "RequestId": {"type": "string"}}}},
        },
    }


# --- helpers shared by the action modules ------------------------------------------------


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def region_arn(ctx: Context, region: str, kind: str, ident: str) -> str:
    return f"acs:ecs:{region}:{ctx.services.config.account_id}:{kind}/{ident}"


async def check_region(ctx: Context, region: str) -> None:
    if region not in await ctx.services.repo.region_names():
        raise ApiError(
            400, "InvalidRegionId.NotFound",
            f"region {region!r} is not served here; known: "
            + ", ".join(await ctx.services.repo.region_names()),
        )


def authorize_resource(ctx: Context, ram_action: str, resource: str, **context: object) -> None:
    ctx.resources.append(resource)
    authorize(ctx.principal, ram_action, resource, context)



async def instance_row(ctx: Context, instance_id: str) -> dict[str, Any]:
    return (await instance_rows(ctx, [instance_id]))[0]


async def instance_rows(ctx: Context, instance_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The registered instances, in the order given (looked up together, a query per 500
    ids); 404 names the first that is not registered."""
    if not instance_ids:
        return []
    for instance_id in instance_ids:
        if not is_instance_id(instance_id):
            raise invalid_parameter("InstanceId",
                                    f"{instance_id[:64]!r} is not an mi-… instance id")
    found = {r["id"]: r for r in await ctx.services.repo.list_instances(ids=instance_ids)}
    for instance_id in instance_ids:
        if instance_id not in found:
            raise ApiError(404, "InvalidInstance.NotFound",
                           f"instance {instance_id} is not registered")
    return [found[i] for i in instance_ids]
