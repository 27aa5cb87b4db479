"""API actions: terminal sessions and per-region Session Manager settings."""

from __future__ import annotations

import json
from typing import Any

from server.api import (
    Context,
    Param,
    action,
    authorize_resource,
    check_region,
    instance_row,
    iso,
    region_arn,
)
from server.authz import authorize
from server.errors import ApiError, invalid_parameter

# --- terminal sessions ---------------------------------------------------------------------

DEFAULT_SESSION_USER = "porthole-user"


def _session_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "SessionId": row["id"], "InstanceId": row["instance_id"], "Region": row["region"],
        "Owner": row["owner"],
        "Username": "" if row["kind"] == "port" else row["run_as"] or (
            "root" if row["kind"] == "file" else DEFAULT_SESSION_USER),
        "CommandLine": row["command"], "Reason": row["reason"], "SourceIp": row["source_ip"],
        "Status": row["status"], "StartTime": iso(row["started_at"]),
        "EndTime": iso(row["ended_at"]), "ExitCode": row["exit_code"],
        "EndReason": row["end_reason"], "Kind": row["kind"].capitalize(),
        "PortNumber": row["port_number"], "RemoteHost": row["remote_host"],
    }


@action(
    "StartTerminalSession", "ecs:StartTerminalSession",
    "Open a terminal session (a login shell, or one command on a PTY) on an instance, or with "
    "PortNumber a TCP connection from the instance to RemoteHost:PortNumber; then connect to "
    "StreamPath with a signed WebSocket request.",
    Param("InstanceId", "string", "The instance", required=True),
    Param("Username", "string", "Log in as this user (default: the agent's porthole-user)"),
    Param("CommandLine", "string", "Run this command on a PTY instead of a login shell"),
    Param("PortNumber", "integer", "Forward to this port instead of starting a shell",
          minimum=1, maximum=65535),
    Param("RemoteHost", "string", "Host the instance connects to (default 127.0.0.1)",
          default=""),
    Param("Reason", "string", "Why (kept in the audit log)", default=""),
    Param("Cols", "integer", "Terminal width", default=80, minimum=1, maximum=10000),
    Param("Rows", "integer", "Terminal height", default=24, minimum=1, maximum=10000),
    Param("Term", "string", "TERM of the operator's terminal", default="xterm-256color"),
    Param("DryRun", "boolean", "Only check policy, region and agent; open nothing",
          default=False),
    mutating=True,
)
async def start_terminal_session(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await instance_row(ctx, p["InstanceId"])
    port = p["PortNumber"]
    if port and (p["Username"] or p["CommandLine"]):
        raise invalid_parameter("PortNumber", "cannot be combined with Username or CommandLine")
    if len(p["RemoteHost"]) > 253:
        raise invalid_parameter("RemoteHost", "is longer than 253 characters")
    arn = region_arn(ctx, row["region"], "instance", row["id"])
    if port:
        authorize_resource(ctx, "ecs:StartTerminalSession", arn, **{"ecs:PortNumber": port})
    else:
        authorize_resource(ctx, "ecs:StartTerminalSession", arn,
                           **{"ecs:CommandRunAs": p["Username"] or DEFAULT_SESSION_USER})
    if p["DryRun"]:
        await ctx.services.sessions.check_open(row)
        return {"DryRun": True}
    if port:
        params: dict[str, Any] = {"host": p["RemoteHost"] or "127.0.0.1", "port": port}
    else:
        params = {"cols": p["Cols"], "rows": p["Rows"], "term": p["Term"][:64]}
        if p["Username"]:
            params["user"] = p["Username"]
        if p["CommandLine"]:
            params["command"] = p["CommandLine"]
    session = await ctx.services.sessions.open(
        ctx.principal.name, row, "port" if port else "shell", params, p["Reason"][:1000],
        ctx.principal.source_ip,
    )
    detail: dict[str, Any] = {"SessionId": session.id, "Reason": p["Reason"][:1000]}
    if port:
        detail.update(PortNumber=port, RemoteHost=p["RemoteHost"] or "127.0.0.1")
    else:
        detail["Username"] = p["Username"] or DEFAULT_SESSION_USER
    await ctx.services.repo.audit(
        request_id=ctx.request_id, principal=ctx.principal.arn, action="SessionStart",
        resource=arn, source_ip=ctx.principal.source_ip, outcome="Allowed",
        detail=json.dumps(detail),
    )
    return {"SessionId": session.id, "Channel": session.channel,
            "StreamPath": f"/api/v1/sessions/{session.id}/stream"}


FILE_OPERATIONS = {  # API operation -> (agent operation, RAM action)
    "Upload": ("put", "ecs:SendFile"),
    "MakeDirectory": ("mkdir", "ecs:SendFile"),
    "Download": ("get", "ecs:DownloadFile"),
    "List": ("list", "ecs:DownloadFile"),
}


@action(
    "StartFileTransfer", "ecs:SendFile",
    "Copy one file to (Upload, MakeDirectory: ecs:SendFile) or from (Download, List: "
    "ecs:DownloadFile) an instance as Username (default root); then stream it over "
    "StreamPath. The agent checks the path and writes atomically; the close carries the "
    "SHA-256 it computed.",
    Param("InstanceId", "string", "The instance", required=True),
    Param("Operation", "string", "What to do", required=True,
          enum=tuple(FILE_OPERATIONS)),
    Param("Path", "string", "Absolute path on the instance", required=True),
    Param("Username", "string", "Read or write as this user (default root)", default=""),
    Param("Mode", "integer", "Permission bits of an uploaded file or directory",
          default=0o644, minimum=0, maximum=0o7777),
    Param("ModifiedTime", "number", "Modification time of an uploaded file (Unix seconds)",
          default=0),
    Param("Reason", "string", "Why (kept in the audit log)", default=""),
    mutating=True,
)
async def start_file_transfer(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await instance_row(ctx, p["InstanceId"])
    path = p["Path"]
    if not path.startswith("/") or ".." in path.split("/") or len(path) > 4096 or "\0" in path:
        raise invalid_parameter("Path", "must be an absolute path without '..' components")
    op, ram_action = FILE_OPERATIONS[p["Operation"]]
    user = p["Username"] or "root"
    arn = region_arn(ctx, row["region"], "instance", row["id"])
    authorize_resource(ctx, ram_action, arn, **{"ecs:CommandRunAs": user})
    params = {"op": op, "path": path, "user": user, "mode": p["Mode"],
              "mtime": p["ModifiedTime"]}
    session = await ctx.services.sessions.open(
        ctx.principal.name, row, "file", params, p["Reason"][:1000], ctx.principal.source_ip)
    await ctx.services.repo.audit(
        request_id=ctx.request_id, principal=ctx.principal.arn, action="SessionStart",
        resource=arn, source_ip=ctx.principal.source_ip, outcome="Allowed",
        detail=json.dumps({"SessionId": session.id, "Operation": p["Operation"], "Path": path,
                           "Username": user}),
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
                      region_arn(ctx, row["region"], "instance", row["instance_id"]))
        except ApiError:
            continue
        visible.append(_session_view(row))
    ctx.resources.append(region_arn(ctx, "*", "instance", "*"))
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
    authorize_resource(ctx, "ecs:TerminateSession",
               region_arn(ctx, row["region"], "instance", row["instance_id"]))
    if not await ctx.services.sessions.terminate_anywhere(
            row, f"terminated by {ctx.principal.name}"):
        raise ApiError(409, "SessionNotActive", f"session {row['id']} is not open")
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
        await check_region(ctx, p["RegionId"])
    authorize_resource(ctx, "ecs:DescribeCloudAssistantSettings",
               region_arn(ctx, p["RegionId"] or "*", "cloudassistant", "settings"))
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
    await check_region(ctx, p["RegionId"])
    authorize_resource(ctx, "ecs:ModifyCloudAssistantSettings",
               region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
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
    await check_region(ctx, p["RegionId"])
    authorize_resource(ctx, "ecs:DescribeUserBusinessBehavior",
               region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
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
    await check_region(ctx, p["RegionId"])
    authorize_resource(ctx, "ecs:ModifyUserBusinessBehavior",
               region_arn(ctx, p["RegionId"], "cloudassistant", "settings"))
    await ctx.services.repo.update_region(
        p["RegionId"], session_manager_enabled=p["statusValue"] == "enabled")
    return {"StatusValue": p["statusValue"]}
