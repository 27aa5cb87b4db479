"""The operator API's actions (registered with :func:`server.api.action`)."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import time
from typing import Any

from proto.ids import is_instance_id, new_activation
from server.api import Context, Param, action
from server.authz import authorize
from server.commands import API_OUTPUT_LIMIT, aggregate_status
from server.errors import ApiError, invalid_parameter


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _region_arn(ctx: Context, region: str, kind: str, ident: str) -> str:
    return f"acs:ecs:{region}:{ctx.services.config.account_id}:{kind}/{ident}"


async def _check_region(ctx: Context, region: str) -> None:
    if region not in await ctx.services.repo.region_names():
        raise ApiError(
            400, "InvalidRegionId.NotFound",
            f"region {region!r} is not served here; known: "
            + ", ".join(await ctx.services.repo.region_names()),
        )


def _authorize(ctx: Context, ram_action: str, resource: str, **context: object) -> None:
    ctx.resources.append(resource)
    authorize(ctx.principal, ram_action, resource, context)


# --- activations ---------------------------------------------------------------------------


@action(
    "CreateActivation", "ecs:CreateActivation",
    "Create an activation code that registers up to InstanceCount agents in a region.",
    Param("Region", "string", "Region the registered instances belong to", required=True),
    Param("InstanceCount", "integer", "How many agents may register with it", default=10,
          minimum=1, maximum=1000),
    Param("TimeToLiveInHours", "number", "Hours until the activation expires", default=4,
          minimum=0.0001, maximum=876000),
    Param("Description", "string", "Free text", default=""),
    mutating=True,
)
async def create_activation(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    await _check_region(ctx, p["Region"])
    activation_id, code = new_activation()
    _authorize(ctx, "ecs:CreateActivation", _region_arn(ctx, p["Region"], "activation",
                                                         activation_id))
    expires_at = time.time() + p["TimeToLiveInHours"] * 3600
    await ctx.services.repo.create_activation(
        activation_id, code, p["Region"], p["InstanceCount"], expires_at, p["Description"][:256],
        ctx.principal.name,
    )
    return {"ActivationId": activation_id, "ActivationCode": code, "Region": p["Region"],
            "InstanceCount": p["InstanceCount"], "ExpiresAt": iso(expires_at)}


@action("DescribeActivations", "ecs:DescribeActivations", "List activations.")
async def describe_activations(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    _authorize(ctx, "ecs:DescribeActivations", _region_arn(ctx, "*", "activation", "*"))
    rows = await ctx.services.repo.list_activations()
    return {"Activations": [{
        "ActivationId": r["id"], "Region": r["region"], "Description": r["description"],
        "InstanceCount": r["usage_limit"], "RegisteredCount": r["usage_count"],
        "ExpiresAt": iso(r["expires_at"]), "CreationTime": iso(r["created_at"]),
        "Expired": r["expires_at"] < time.time(),
    } for r in rows]}


# --- managed instances ---------------------------------------------------------------------


def _instance_view(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    online = ctx.services.gateway.link(row["id"]) is not None
    return {
        "InstanceId": row["id"],
        "Hostname": row["hostname"],
        "Region": row["region"],
        "OsType": row["platform"],
        "OsName": row["os_name"],
        "AgentVersion": row["agent_version"],
        "AgentStatus": "Online" if online else "Offline",
        "LastHeartbeatTime": iso(row["last_heartbeat"]),
        "RegistrationTime": iso(row["registered_at"]),
    }


@action(
    "DescribeManagedInstances", "ecs:DescribeInstances",
    "List registered instances with their agent's status.",
    Param("Region", "string", "Only instances in this region"),
    Param("InstanceIds", "array", "Only these instances"),
)
async def describe_instances(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    rows = await ctx.services.repo.list_instances(p["Region"], p["InstanceIds"])
    visible = []
    for row in rows:
        arn = _region_arn(ctx, row["region"], "instance", row["id"])
        try:
            authorize(ctx.principal, "ecs:DescribeInstances", arn)
        except ApiError:
            continue
        visible.append(_instance_view(ctx, row))
    ctx.resources.append(_region_arn(ctx, p["Region"] or "*", "instance", "*"))
    return {"Instances": visible, "TotalCount": len(visible)}


async def _instance(ctx: Context, instance_id: str) -> dict[str, Any]:
    if not is_instance_id(instance_id):
        raise invalid_parameter("InstanceId", f"{instance_id[:64]!r} is not an mi-… instance id")
    row = await ctx.services.repo.instance(instance_id)
    if row is None or row["deregistered_at"] is not None:
        raise ApiError(404, "InvalidInstance.NotFound", f"instance {instance_id} is not registered")
    return row


@action(
    "DeregisterManagedInstance", "ecs:DeregisterManagedInstance",
    "Deregister an instance: its agent is disconnected and can no longer connect.",
    Param("InstanceId", "string", "The instance", required=True),
    mutating=True,
)
async def deregister_instance(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _instance(ctx, p["InstanceId"])
    _authorize(ctx, "ecs:DeregisterManagedInstance",
               _region_arn(ctx, row["region"], "instance", row["id"]))
    await ctx.services.repo.deregister_instance(row["id"])
    link = ctx.services.gateway.link(row["id"])
    if link is not None:
        await link.ws.close(code=1008, message=b"InstanceDeregistered")
    return {"InstanceId": row["id"]}


# --- commands ------------------------------------------------------------------------------

COMMAND_TYPES = ("RunShellScript", "RunPowerShellScript", "RunBatScript")


@action(
    "RunCommand", "ecs:RunCommand",
    "Run a script on one or more instances and return the invocation id.",
    Param("InstanceIds", "array", "Target instances", required=True),
    Param("CommandContent", "string", "The script", required=True),
    Param("ContentEncoding", "string", "PlainText or Base64", default="PlainText",
          enum=("PlainText", "Base64")),
    Param("Type", "string", "Script type", default="RunShellScript", enum=COMMAND_TYPES),
    Param("Username", "string", "Run as this user (default root)", default=""),
    Param("Timeout", "integer", "Seconds before the script is killed", default=60,
          minimum=1, maximum=86400),
    Param("WorkingDir", "string", "Working directory (default: the user's home)", default=""),
    mutating=True,
)
async def run_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    ids = list(dict.fromkeys(p["InstanceIds"]))
    if not ids or len(ids) > 1000:
        raise invalid_parameter("InstanceIds", "give between 1 and 1000 instance ids")
    content = p["CommandContent"]
    if p["ContentEncoding"] == "Base64":
        try:
            content = base64.b64decode(content, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise invalid_parameter("CommandContent", "is not base64 of UTF-8 text") from None
    if not content.strip():
        raise invalid_parameter("CommandContent", "is empty")
    if len(content.encode()) > 64 * 1024:
        raise invalid_parameter("CommandContent", "is larger than 64 KiB")
    username = p["Username"] or "root"
    rows = [await _instance(ctx, iid) for iid in ids]
    for row in rows:
        _authorize(ctx, "ecs:RunCommand", _region_arn(ctx, row["region"], "instance", row["id"]),
                   **{"ecs:CommandRunAs": username})
    invocation_id = await ctx.services.commands.run(
        ids, content, p["Type"], username, p["Timeout"], p["WorkingDir"], ctx.principal.name
    )
    return {"InvokeId": invocation_id}


@action(
    "DescribeInvocationResults", "ecs:DescribeInvocationResults",
    "Status, exit code and output of an invocation on each of its instances.",
    Param("InvokeId", "string", "The invocation", required=True),
)
async def describe_invocation_results(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    repo = ctx.services.repo
    invocation = await repo.invocation(p["InvokeId"])
    if invocation is None:
        raise ApiError(404, "InvalidInvokeId.NotFound",
                       f"invocation {p['InvokeId'][:64]} not found")
    results = await repo.invocation_results_for(invocation["id"])
    for r in results:
        row = await repo.instance(r["instance_id"])
        region = row["region"] if row else "*"
        _authorize(ctx, "ecs:DescribeInvocationResults",
                   _region_arn(ctx, region, "instance", r["instance_id"]))
    views = []
    for r in results:
        output = r["output"] or b""
        views.append({
            "InstanceId": r["instance_id"],
            "InvocationStatus": r["status"],
            "ExitCode": r["exit_code"],
            "ErrorCode": r["error_code"],
            "ErrorInfo": r["error_info"],
            "Output": base64.b64encode(output[:API_OUTPUT_LIMIT]).decode(),
            "Dropped": r["dropped"] + max(0, len(output) - API_OUTPUT_LIMIT),
            "StartTime": iso(r["started_at"]),
            "FinishTime": iso(r["finished_at"]),
        })
    return {
        "InvokeId": invocation["id"],
        "InvocationStatus": aggregate_status([r["status"] for r in results]),
        "Username": invocation["username"],
        "CreationTime": iso(invocation["created_at"]),
        "Results": views,
    }


# --- terminal sessions ---------------------------------------------------------------------

DEFAULT_SESSION_USER = "porthole-user"


def _session_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "SessionId": row["id"], "InstanceId": row["instance_id"], "Region": row["region"],
        "Owner": row["owner"], "Username": row["run_as"] or DEFAULT_SESSION_USER,
        "CommandLine": row["command"], "Reason": row["reason"], "SourceIp": row["source_ip"],
        "Status": row["status"], "StartTime": iso(row["started_at"]),
        "EndTime": iso(row["ended_at"]), "ExitCode": row["exit_code"],
        "EndReason": row["end_reason"],
    }


@action(
    "StartTerminalSession", "ecs:StartTerminalSession",
    "Open a terminal session (a login shell, or one command on a PTY) on an instance; then "
    "connect to StreamPath with a signed WebSocket request.",
    Param("InstanceId", "string", "The instance", required=True),
    Param("Username", "string", "Log in as this user (default: the agent's porthole-user)"),
    Param("CommandLine", "string", "Run this command on a PTY instead of a login shell"),
    Param("Reason", "string", "Why (kept in the audit log)", default=""),
    Param("Cols", "integer", "Terminal width", default=80, minimum=1, maximum=10000),
    Param("Rows", "integer", "Terminal height", default=24, minimum=1, maximum=10000),
    Param("Term", "string", "TERM of the operator's terminal", default="xterm-256color"),
    mutating=True,
)
async def start_terminal_session(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _instance(ctx, p["InstanceId"])
    _authorize(ctx, "ecs:StartTerminalSession",
               _region_arn(ctx, row["region"], "instance", row["id"]),
               **{"ecs:CommandRunAs": p["Username"] or DEFAULT_SESSION_USER})
    session = await ctx.services.sessions.open(
        ctx.principal.name, row, p["Username"], p["CommandLine"] or "", p["Reason"][:1000],
        p["Cols"], p["Rows"], p["Term"][:64], ctx.principal.source_ip,
    )
    await ctx.services.repo.audit(
        request_id=ctx.request_id, principal=ctx.principal.arn, action="SessionStart",
        resource=_region_arn(ctx, row["region"], "instance", row["id"]),
        source_ip=ctx.principal.source_ip, outcome="Allowed",
        detail=json.dumps({"SessionId": session.id, "Username": p["Username"]
                           or DEFAULT_SESSION_USER, "Reason": p["Reason"][:1000]}),
    )
    return {"SessionId": session.id, "Channel": session.channel,
            "StreamPath": f"/api/v1/sessions/{session.id}/stream"}


@action(
    "DescribeSessions", "ecs:DescribeSessions", "List terminal sessions.",
    Param("Active", "boolean", "Only sessions still open", default=False),
    Param("SessionId", "string", "Only this session"),
)
async def describe_sessions(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    rows = await ctx.services.repo.list_sessions(active=p["Active"])
    if p["SessionId"]:
        rows = [r for r in rows if r["id"] == p["SessionId"]]
    visible = []
    for row in rows:
        try:
            authorize(ctx.principal, "ecs:DescribeSessions",
                      _region_arn(ctx, row["region"], "instance", row["instance_id"]))
        except ApiError:
            continue
        visible.append(_session_view(row))
    ctx.resources.append(_region_arn(ctx, "*", "instance", "*"))
    return {"Sessions": visible}


@action(
    "TerminateSession", "ecs:TerminateSession", "End an open terminal session.",
    Param("SessionId", "string", "The session", required=True),
    mutating=True,
)
async def terminate_session(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await ctx.services.repo.session(p["SessionId"])
    if row is None:
        raise ApiError(404, "InvalidSessionId.NotFound",
                       f"session {p['SessionId'][:64]} not found")
    _authorize(ctx, "ecs:TerminateSession",
               _region_arn(ctx, row["region"], "instance", row["instance_id"]))
    session = ctx.services.sessions.sessions.get(row["id"])
    if session is None or session.closed is not None:
        raise ApiError(409, "SessionNotActive", f"session {row['id']} is not open")
    await ctx.services.sessions.terminate(session, f"terminated by {ctx.principal.name}")
    return {"SessionId": row["id"]}


# --- region settings -----------------------------------------------------------------------


def _settings_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"RegionId": row["name"], "SessionManagerConfig": {
        "SessionManagerEnabled": bool(row["session_manager_enabled"]),
        "IdleTimeout": row["idle_timeout"],
        "MaxSessionDuration": row["max_session_duration"],
    }}


@action(
    "DescribeCloudAssistantSettings", "ecs:DescribeCloudAssistantSettings",
    "Session Manager settings of each region.",
    Param("RegionId", "string", "Only this region"),
    Param("SettingType", "array", "Setting types (only SessionManagerConfig exists)"),
)
async def describe_settings(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    if p["RegionId"]:
        await _check_region(ctx, p["RegionId"])
    _authorize(ctx, "ecs:DescribeCloudAssistantSettings",
               _region_arn(ctx, p["RegionId"] or "*", "cloudassistant", "settings"))
    return {"Settings": [_settings_view(r) for r in
                         await ctx.services.repo.regions(p["RegionId"])]}


@action(
    "ModifyCloudAssistantSettings", "ecs:ModifyCloudAssistantSettings",
    "Switch Session Manager on or off in a region and set its timeouts. Sessions already "
    "open are not ended by switching it off; end them with TerminateSession.",
    Param("RegionId", "string", "The region", required=True),
    Param("SettingType", "string", "What to change", default="SessionManagerConfig",
          enum=("SessionManagerConfig",)),
    Param("SessionManagerConfig", "object",
          "SessionManagerEnabled (boolean), IdleTimeout (minutes, 1-60), MaxSessionDuration "
          "(minutes, 1-1440, or 0 for no limit)", required=True),
    mutating=True,
)
async def modify_settings(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    await _check_region(ctx, p["RegionId"])
    _authorize(ctx, "ecs:ModifyCloudAssistantSettings",
               _region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
    config = p["SessionManagerConfig"]
    values: dict[str, Any] = {}
    for key, value in config.items():
        if key == "SessionManagerEnabled":
            if not isinstance(value, bool):
                raise invalid_parameter("SessionManagerConfig.SessionManagerEnabled",
                                        "must be true or false")
            values["session_manager_enabled"] = value
        elif key == "IdleTimeout":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 60:
                raise invalid_parameter("SessionManagerConfig.IdleTimeout",
                                        "must be 1 to 60 minutes")
            values["idle_timeout"] = value
        elif key == "MaxSessionDuration":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1440:
                raise invalid_parameter("SessionManagerConfig.MaxSessionDuration",
                                        "must be 1 to 1440 minutes, or 0 for no limit")
            values["max_session_duration"] = value or None
        else:
            raise invalid_parameter(f"SessionManagerConfig.{key}"[:64], "is not a setting")
    await ctx.services.repo.update_region(p["RegionId"], **values)
    (row,) = await ctx.services.repo.regions(p["RegionId"])
    return _settings_view(row)


@action(
    "DescribeUserBusinessBehavior", "ecs:DescribeUserBusinessBehavior",
    "Console-compatible: is Session Manager enabled in the region (statusItem "
    "sessionManagerEnable)?",
    Param("RegionId", "string", "The region", required=True),
    Param("statusItem", "string", "Only sessionManagerEnable", default="sessionManagerEnable",
          enum=("sessionManagerEnable",)),
)
async def describe_business_behavior(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    await _check_region(ctx, p["RegionId"])
    _authorize(ctx, "ecs:DescribeUserBusinessBehavior",
               _region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
    (row,) = await ctx.services.repo.regions(p["RegionId"])
    return {"StatusValue": "enabled" if row["session_manager_enabled"] else "disabled"}


@action(
    "ModifyUserBusinessBehavior", "ecs:ModifyUserBusinessBehavior",
    "Console-compatible: enable or disable Session Manager in the region.",
    Param("RegionId", "string", "The region", required=True),
    Param("statusItem", "string", "Only sessionManagerEnable", default="sessionManagerEnable",
          enum=("sessionManagerEnable",)),
    Param("statusValue", "string", "enabled or disabled", required=True,
          enum=("enabled", "disabled")),
    mutating=True,
)
async def modify_business_behavior(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    await _check_region(ctx, p["RegionId"])
    _authorize(ctx, "ecs:ModifyUserBusinessBehavior",
               _region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
    await ctx.services.repo.update_region(
        p["RegionId"], session_manager_enabled=p["statusValue"] == "enabled")
    return {"StatusValue": p["statusValue"]}
