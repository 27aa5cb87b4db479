"""API actions of Cloud Assistant commands: saved commands, invocations, results, SendFile."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any

from proto.commands import MAX_FILE_CONTENT, MAX_TASK_OUTPUT
from proto.ids import COMMAND_ID_RE, INVOCATION_ID_RE, new_command_id
from server.api import (
    Context,
    Param,
    action,
    authorize_resource,
    check_region,
    instance_rows,
    iso,
    region_arn,
)
from server.authz import authorize
from server.commands import (
    API_OUTPUT_LIMIT,
    ParameterError,
    check_values,
    decode_content,
    invocation_status,
    parameter_names,
    resolve_parameters,
)
from server.errors import ApiError, invalid_parameter
from server.scheduler import FrequencyError, parse_frequency, parse_limit
from server.store_commands import REBOOT_MODES

COMMAND_TYPES = ("RunShellScript", "RunPowerShellScript", "RunBatScript")
REPEAT_MODES = ("Once", "Period", "NextRebootOnly", "EveryReboot")
MAX_CONTENT = 64 * 1024
MAX_TARGETS = 1000
MAX_DOWNLOAD = 1024 * 1024
DEFAULT_DELIVERY_TIMEOUT = 600

# --- shared parameter declarations ---------------------------------------------------------

_REGION = Param("RegionId", "string", "Region (default: the only region served)", default="")
_USERNAME = Param("Username", "string", "Run as this user (default root)", default="")
_REPEAT = Param("RepeatMode", "string", "Once, Period (see Frequency), NextRebootOnly or "
                "EveryReboot", default="Once", enum=REPEAT_MODES)
_FREQUENCY = Param("Frequency", "string", "With RepeatMode Period: rate(5m), "
                   "at(2030-01-01 08:00:00 Asia/Shanghai) or a cron expression with an "
                   "optional time zone", default="")
_CONCURRENCY = Param("MaxConcurrency", "string", "Instances running at once: a count or a "
                     "percentage such as 10%; empty: no limit", default="")
_ERRORS = Param("MaxErrors", "string", "Stop sending to more instances after this many "
                "(or this percentage) failed; empty: no limit", default="")
_DELIVERY = Param("DeliveryTimeout", "integer", "Seconds an offline instance may take to come "
                  "back for its task; 0 fails offline instances at once (ClientNotRunning)",
                  default=DEFAULT_DELIVERY_TIMEOUT, minimum=0, maximum=7 * 86400)
_PAGE = Param("PageNumber", "integer", "Page, from 1", default=1, minimum=1)


def _page_size(default: int, maximum: int) -> Param:
    return Param("PageSize", "integer", "Rows per page", default=default, minimum=1,
                 maximum=maximum)


async def _region(ctx: Context, region: str) -> str:
    if region:
        await check_region(ctx, region)
        return region
    names = await ctx.services.repo.region_names()
    if len(names) != 1:
        raise ApiError(400, "MissingParameter.RegionId",
                       f"RegionId is required: this server serves {', '.join(names)}")
    return names[0]


def _content(p: dict[str, Any], name: str = "CommandContent") -> str:
    try:
        content = decode_content(p[name], p.get("ContentEncoding") or "PlainText", name)
    except ValueError as exc:
        raise invalid_parameter(name, str(exc)) from None
    if not content.strip():
        raise invalid_parameter(name, "is empty")
    if len(content.encode()) > MAX_CONTENT:
        raise invalid_parameter(name, "is larger than 64 KiB")
    return content


def _defaults(value: Any) -> dict[str, str]:
    try:
        return check_values(value or {}, "DefaultParameters")
    except ParameterError as exc:
        raise invalid_parameter("DefaultParameters", str(exc)) from None


async def _targets(ctx: Context, ids: Sequence[str], ram_action: str,
                   **context: object) -> tuple[str, list[str]]:
    """Check the instances (registered, one region) and the caller's right on each."""
    ids = list(dict.fromkeys(ids))
    if not ids or len(ids) > MAX_TARGETS:
        raise invalid_parameter("InstanceIds", f"give between 1 and {MAX_TARGETS} instance ids")
    rows = await instance_rows(ctx, ids)
    regions = sorted({r["region"] for r in rows})
    if len(regions) > 1:
        raise invalid_parameter("InstanceIds", f"instances span regions {', '.join(regions)};"
                                " invoke once per region")
    for row in rows:
        authorize_resource(ctx, ram_action, region_arn(ctx, row["region"], "instance",
                                                       row["id"]), **context)
    return regions[0], ids


def _schedule(p: dict[str, Any]) -> str:
    mode, frequency = p["RepeatMode"], p["Frequency"].strip()
    if mode == "Period":
        if not frequency:
            raise ApiError(400, "MissingParameter.Frequency",
                           "RepeatMode Period needs a Frequency such as rate(5m)")
        try:
            parse_frequency(frequency)
        except FrequencyError as exc:
            raise invalid_parameter("Frequency", str(exc)) from None
    elif frequency:
        raise invalid_parameter("Frequency", f"only applies to RepeatMode Period, not {mode}")
    return frequency


def _limits(p: dict[str, Any], total: int) -> tuple[int, int]:
    try:
        return (parse_limit(p["MaxConcurrency"], total, "MaxConcurrency", 0),
                parse_limit(p["MaxErrors"], total, "MaxErrors", -1))
    except ValueError as exc:
        name = "MaxConcurrency" if "MaxConcurrency" in str(exc) else "MaxErrors"
        raise invalid_parameter(name, str(exc)) from None


def _check_username(username: str) -> str:
    username = username or "root"
    if not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}", username):
        raise invalid_parameter("Username", f"{username[:70]!r} is not a user name")
    return username


# --- saved commands ------------------------------------------------------------------------


def _command_view(row: dict[str, Any], invoke_times: int = 0) -> dict[str, Any]:
    return {
        "CommandId": row["id"], "RegionId": row["region"], "Name": row["name"],
        "Description": row["description"], "Type": row["type"],
        "CommandContent": base64.b64encode(row["content"].encode()).decode(),
        "WorkingDir": row["working_dir"], "Timeout": row["timeout"],
        "EnableParameter": row["enable_parameter"],
        "ParameterNames": json.loads(row["parameter_names"]),
        "DefaultParameters": json.loads(row["default_parameters"]),
        "CreationTime": iso(row["created_at"]), "ModificationTime": iso(row["modified_at"]),
        "CreatedBy": row["created_by"], "InvokeTimes": invoke_times,
    }


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 128:
        raise invalid_parameter("Name", "must be 1 to 128 characters")
    return name


def _parameter_names(content: str, enabled: bool) -> list[str]:
    if not enabled:
        return []
    try:
        return parameter_names(content)
    except ParameterError as exc:
        raise invalid_parameter("CommandContent", str(exc)) from None


@action(
    "CreateCommand", "ecs:CreateCommand", "Save a command for later invocations.",
    _REGION,
    Param("Name", "string", "Name (up to 128 characters)", required=True),
    Param("Description", "string", "Free text", default=""),
    Param("Type", "string", "Script type", default="RunShellScript", enum=COMMAND_TYPES),
    Param("CommandContent", "string", "The script", required=True),
    Param("ContentEncoding", "string", "PlainText or Base64", default="PlainText",
          enum=("PlainText", "Base64")),
    Param("WorkingDir", "string", "Working directory (default: the user's home)",
          default="", max_length=1024),
    Param("Timeout", "integer", "Seconds before the script is killed", default=60,
          minimum=1, maximum=86400),
    Param("EnableParameter", "boolean", "Treat {{name}} in the script as parameters",
          default=False),
    Param("DefaultParameters", "object", "Default values of parameters", default=None),
    mutating=True,
)
async def create_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    region = await _region(ctx, p["RegionId"])
    command_id = new_command_id()
    authorize_resource(ctx, "ecs:CreateCommand", region_arn(ctx, region, "command",
                                                            command_id))
    content = _content(p)
    names = _parameter_names(content, p["EnableParameter"])
    defaults = _defaults(p["DefaultParameters"])
    if set(defaults) - set(names):
        raise invalid_parameter("DefaultParameters", "no placeholder {{"
                                + ", ".join(sorted(set(defaults) - set(names))) + "}} in the "
                                "script (or EnableParameter is false)")
    await ctx.services.repo.create_command(
        id=command_id, region=region, name=_check_name(p["Name"]),
        description=p["Description"][:512], type=p["Type"], content=content,
        working_dir=p["WorkingDir"], timeout=p["Timeout"],
        enable_parameter=p["EnableParameter"], parameter_names=json.dumps(names),
        default_parameters=json.dumps(defaults), created_by=ctx.principal.name)
    return {"CommandId": command_id}


async def _command(ctx: Context, command_id: str, ram_action: str,
                   **context: object) -> dict[str, Any]:
    if not COMMAND_ID_RE.match(command_id):
        raise invalid_parameter("CommandId", f"{command_id[:64]!r} is not a c-… command id")
    row = await ctx.services.repo.command(command_id)
    if row is None:
        raise ApiError(404, "InvalidCommandId.NotFound", f"command {command_id} not found")
    authorize_resource(ctx, ram_action, region_arn(ctx, row["region"], "command", row["id"]),
                       **context)
    return row


@action(
    "DescribeCommands", "ecs:DescribeCommands", "List saved commands.",
    _REGION,
    Param("CommandId", "string", "Only this command", default=""),
    Param("Name", "string", "Only this name (a trailing * matches a prefix)", default=""),
    Param("Type", "string", "Only this type", default=""),
    _PAGE, _page_size(10, 100),
)
async def describe_commands(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    if p["CommandId"]:
        await _command(ctx, p["CommandId"], "ecs:DescribeCommands")
    if p["RegionId"]:
        await check_region(ctx, p["RegionId"])
    size = p["PageSize"]
    rows, total = await ctx.services.repo.list_commands(
        region=p["RegionId"], command_id=p["CommandId"], name=p["Name"],
        command_type=p["Type"], offset=(p["PageNumber"] - 1) * size, limit=size)
    visible = [r for r in rows if _may(ctx, "ecs:DescribeCommands",
                                       region_arn(ctx, r["region"], "command", r["id"]))]
    counts = await ctx.services.repo.command_invoke_counts([r["id"] for r in visible])
    return {"Commands": [_command_view(r, counts.get(r["id"], 0)) for r in visible],
            "TotalCount": total, "PageNumber": p["PageNumber"], "PageSize": size}


def _may(ctx: Context, ram_action: str, resource: str) -> bool:
    try:
        authorize(ctx.principal, ram_action, resource)
    except ApiError:
        return False
    return True


@action(
    "ModifyCommand", "ecs:ModifyCommand", "Change a saved command.",
    Param("CommandId", "string", "The command", required=True),
    Param("Name", "string", "New name", default=None),
    Param("Description", "string", "New description", default=None),
    Param("CommandContent", "string", "New script", default=None),
    Param("ContentEncoding", "string", "PlainText or Base64", default="PlainText",
          enum=("PlainText", "Base64")),
    Param("WorkingDir", "string", "New working directory",
          default=None, max_length=1024),
    Param("Timeout", "integer", "New timeout in seconds", default=None, minimum=1,
          maximum=86400),
    Param("EnableParameter", "boolean", "Treat {{name}} as parameters", default=None),
    Param("DefaultParameters", "object", "New default values (replace the old ones)",
          default=None),
    mutating=True,
)
async def modify_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _command(ctx, p["CommandId"], "ecs:ModifyCommand")
    values: dict[str, Any] = {}
    if p["Name"] is not None:
        values["name"] = _check_name(p["Name"])
    if p["Description"] is not None:
        values["description"] = p["Description"][:512]
    if p["CommandContent"] is not None:
        values["content"] = _content(p)
    if p["WorkingDir"] is not None:
        values["working_dir"] = p["WorkingDir"]
    if p["Timeout"] is not None:
        values["timeout"] = p["Timeout"]
    if p["EnableParameter"] is not None:
        values["enable_parameter"] = p["EnableParameter"]
    content = values.get("content", row["content"])
    enabled = values.get("enable_parameter", row["enable_parameter"])
    names = _parameter_names(content, enabled)
    defaults = _defaults(p["DefaultParameters"]) if p["DefaultParameters"] is not None \
        else {k: v for k, v in json.loads(row["default_parameters"]).items() if k in names}
    if set(defaults) - set(names):
        raise invalid_parameter("DefaultParameters", "no placeholder for "
                                + ", ".join(sorted(set(defaults) - set(names))))
    values.update(parameter_names=json.dumps(names), default_parameters=json.dumps(defaults))
    await ctx.services.repo.update_command(row["id"], **values)
    return {"CommandId": row["id"]}


@action(
    "DeleteCommand", "ecs:DeleteCommand",
    "Delete a saved command (its past invocations and results stay).",
    Param("CommandId", "string", "The command", required=True),
    mutating=True,
)
async def delete_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await _command(ctx, p["CommandId"], "ecs:DeleteCommand")
    await ctx.services.repo.delete_command(row["id"])
    return {"CommandId": row["id"]}


# --- invocations ---------------------------------------------------------------------------


def _given_parameters(value: Any) -> dict[str, str]:
    try:
        return check_values(value or {})
    except ParameterError as exc:
        raise invalid_parameter("Parameters", str(exc)) from None


async def _invoke(ctx: Context, p: dict[str, Any], *, ram_action: str, content: str,
                  command_type: str, enable_parameter: bool, defaults: dict[str, str],
                  timeout: int, working_dir: str, command_id: str = "", command_name: str = "",
                  command_arn: str = "") -> tuple[str, str]:
    username = _check_username(p["Username"])
    frequency = _schedule(p)
    given = _given_parameters(p["Parameters"])
    parameters: dict[str, str] | None = None
    if enable_parameter:
        try:
            parameters = resolve_parameters(content, given, defaults)
        except ParameterError as exc:
            raise invalid_parameter("Parameters", str(exc)) from None
    elif given:
        raise invalid_parameter("Parameters", "the command does not take parameters "
                                "(EnableParameter is false)")
    if command_arn:
        authorize_resource(ctx, ram_action, command_arn, **{"ecs:CommandRunAs": username})
    region, ids = await _targets(ctx, p["InstanceIds"], ram_action,
                                 **{"ecs:CommandRunAs": username})
    if command_arn and region != command_arn.split(":")[2]:
        raise invalid_parameter("InstanceIds", f"the instances are in {region}, the command "
                                f"in {command_arn.split(':')[2]}")
    concurrency, errors = _limits(p, len(ids))
    invoke_id = await ctx.services.commands.invoke(
        instance_ids=ids, region=region, command_type=command_type, content=content,
        username=username, timeout=timeout, working_dir=working_dir,
        created_by=ctx.principal.name, parameters=parameters, command_id=command_id,
        command_name=command_name, repeat_mode=p["RepeatMode"], frequency=frequency,
        max_concurrency=concurrency, max_errors=errors,
        delivery_timeout=p["DeliveryTimeout"])
    return invoke_id, region


@action(
    "InvokeCommand", "ecs:InvokeCommand", "Run a saved command on instances.",
    Param("CommandId", "string", "The saved command", required=True),
    Param("InstanceIds", "array", "Target instances (up to 1000)", required=True),
    Param("Parameters", "object", "Values of the command's {{parameters}}", default=None),
    _USERNAME,
    Param("Timeout", "integer", "Seconds before the script is killed (default: the "
          "command's)", default=None, minimum=1, maximum=86400),
    Param("WorkingDir", "string", "Working directory (default: the command's)",
          default=None, max_length=1024),
    _REPEAT, _FREQUENCY, _CONCURRENCY, _ERRORS, _DELIVERY,
    mutating=True,
)
async def invoke_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    if not COMMAND_ID_RE.match(p["CommandId"]):
        raise invalid_parameter("CommandId", f"{p['CommandId'][:64]!r} is not a c-… id")
    row = await ctx.services.repo.command(p["CommandId"])
    if row is None:
        raise ApiError(404, "InvalidCommandId.NotFound", f"command {p['CommandId']} not found")
    invoke_id, _ = await _invoke(
        ctx, p, ram_action="ecs:InvokeCommand", content=row["content"],
        command_type=row["type"], enable_parameter=row["enable_parameter"],
        defaults=json.loads(row["default_parameters"]),
        timeout=p["Timeout"] or row["timeout"],
        working_dir=row["working_dir"] if p["WorkingDir"] is None else p["WorkingDir"],
        command_id=row["id"], command_name=row["name"],
        command_arn=region_arn(ctx, row["region"], "command", row["id"]))
    return {"InvokeId": invoke_id}


@action(
    "RunCommand", "ecs:RunCommand",
    "Run a script on one or more instances and return the invocation id.",
    Param("InstanceIds", "array", "Target instances (up to 1000)", required=True),
    Param("CommandContent", "string", "The script", required=True),
    Param("ContentEncoding", "string", "PlainText or Base64", default="PlainText",
          enum=("PlainText", "Base64")),
    Param("Type", "string", "Script type", default="RunShellScript", enum=COMMAND_TYPES),
    _USERNAME,
    Param("Timeout", "integer", "Seconds before the script is killed", default=60,
          minimum=1, maximum=86400),
    Param("WorkingDir", "string", "Working directory (default: the user's home)",
          default="", max_length=1024),
    Param("EnableParameter", "boolean", "Treat {{name}} in the script as parameters",
          default=False),
    Param("Parameters", "object", "Values of the {{parameters}}", default=None),
    _REPEAT, _FREQUENCY, _CONCURRENCY, _ERRORS, _DELIVERY,
    Param("KeepCommand", "boolean", "Also save the script as a command", default=False),
    Param("Name", "string", "Name of the saved command (with KeepCommand)", default=""),
    Param("Description", "string", "Description of the saved command", default=""),
    mutating=True,
)
async def run_command(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    content = _content(p)
    if p["EnableParameter"]:
        _parameter_names(content, True)
    command_id, name = "", ""
    if p["KeepCommand"]:
        command_id, name = new_command_id(), _check_name(p["Name"] or "RunCommand")
    invoke_id, region = await _invoke(
        ctx, p, ram_action="ecs:RunCommand", content=content, command_type=p["Type"],
        enable_parameter=p["EnableParameter"], defaults={}, timeout=p["Timeout"],
        working_dir=p["WorkingDir"], command_id=command_id, command_name=name)
    reply = {"InvokeId": invoke_id}
    if command_id:
        await ctx.services.repo.create_command(
            id=command_id, region=region, name=name, description=p["Description"][:512],
            type=p["Type"], content=content, working_dir=p["WorkingDir"],
            timeout=p["Timeout"], enable_parameter=p["EnableParameter"],
            parameter_names=json.dumps(_parameter_names(content, p["EnableParameter"])),
            default_parameters="{}", created_by=ctx.principal.name)
        reply["CommandId"] = command_id
    return reply


# --- SendFile ------------------------------------------------------------------------------


@action(
    "SendFile", "ecs:SendFile",
    "Write a file (up to 32 KiB) on instances; results are read like an invocation's.",
    Param("InstanceIds", "array", "Target instances (up to 1000)", required=True),
    Param("Name", "string", "File name", required=True),
    Param("TargetDir", "string", "Absolute directory on the instance", required=True),
    Param("Content", "string", "File content", required=True),
    Param("ContentType", "string", "PlainText or Base64", default="PlainText",
          enum=("PlainText", "Base64")),
    Param("FileOwner", "string", "Owner", default="root"),
    Param("FileGroup", "string", "Group (default: the owner's primary group)", default=""),
    Param("FileMode", "string", "Octal mode", default="0644"),
    Param("Overwrite", "boolean", "Replace an existing file", default=False),
    Param("Timeout", "integer", "Seconds the write may take", default=60, minimum=1,
          maximum=86400),
    Param("Description", "string", "Free text", default=""),
    _DELIVERY,
    mutating=True,
)
async def send_file(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    if p["ContentType"] == "Base64":
        try:
            data = base64.b64decode(p["Content"], validate=True)
        except ValueError:
            raise invalid_parameter("Content", "is not base64") from None
    else:
        data = p["Content"].encode()
    if len(data) > MAX_FILE_CONTENT:
        raise invalid_parameter("Content", f"is larger than {MAX_FILE_CONTENT // 1024} KiB")
    name, target = p["Name"], p["TargetDir"]
    if not name or "/" in name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise invalid_parameter("Name", "must be a plain file name (no /)")
    if not target.startswith("/") or "\0" in target or len(target) > 1024:
        raise invalid_parameter("TargetDir", "must be an absolute directory path")
    if not re.fullmatch(r"0?[0-7]{3,4}", p["FileMode"]):
        raise invalid_parameter("FileMode", "must be an octal mode such as 0644")
    owner = _check_username(p["FileOwner"])
    if p["FileGroup"] and not re.fullmatch(r"[A-Za-z0-9_.][A-Za-z0-9_.@-]{0,63}",
                                           p["FileGroup"]):
        raise invalid_parameter("FileGroup", "is not a group name")
    region, ids = await _targets(ctx, p["InstanceIds"], "ecs:SendFile")
    invoke_id = await ctx.services.commands.invoke(
        instance_ids=ids, region=region, command_type="SendFile",
        content=base64.b64encode(data).decode(), username=owner, timeout=p["Timeout"],
        working_dir=target, created_by=ctx.principal.name, kind="file",
        command_name=name, file={"Name": name, "TargetDir": target, "FileOwner": owner,
                                 "FileGroup": p["FileGroup"], "FileMode": p["FileMode"],
                                 "Overwrite": p["Overwrite"],
                                 "Description": p["Description"][:512]},
        delivery_timeout=p["DeliveryTimeout"])
    return {"InvokeId": invoke_id}


# --- status and results --------------------------------------------------------------------


async def _invocation(ctx: Context, invoke_id: str) -> dict[str, Any]:
    if not INVOCATION_ID_RE.match(invoke_id):
        raise invalid_parameter("InvokeId", f"{invoke_id[:64]!r} is not a t-… invocation id")
    inv = await ctx.services.repo.invocation(invoke_id)
    if inv is None:
        raise ApiError(404, "InvalidInvokeId.NotFound", f"invocation {invoke_id} not found")
    return inv


def _invocation_view(inv: dict[str, Any], counts: dict[str, int], targets: int,
                     waiting: bool) -> dict[str, Any]:
    status = invocation_status(inv, counts, waiting)
    view = {
        "InvokeId": inv["id"], "CommandId": inv["command_id"],
        "CommandName": inv["command_name"], "CommandType": inv["command_type"],
        "RegionId": inv["region"], "Username": inv["username"], "Timeout": inv["timeout"],
        "RepeatMode": inv["repeat_mode"], "Frequency": inv["frequency"],
        "Timed": inv["repeat_mode"] != "Once",
        "NextRunTime": iso(inv["next_run_at"]) if inv["stop_requested_at"] is None else None,
        "Repeats": inv["repeats"],
        "InvocationStatus": status, "InvokeStatus": status,
        "CreationTime": iso(inv["created_at"]), "CreatedBy": inv["created_by"],
        "StopTime": iso(inv["stop_requested_at"]),
        "MaxConcurrency": inv["max_concurrency"] or None,
        "MaxErrors": inv["max_errors"] if inv["max_errors"] >= 0 else None,
        "DeliveryTimeout": inv["delivery_timeout"],
        "InstanceCount": targets, "StatusCounts": counts,
    }
    if inv["kind"] == "file":
        view["File"] = json.loads(inv["file"])
    else:
        view["CommandContent"] = base64.b64encode(inv["command_content"].encode()).decode()
        view["Parameters"] = json.loads(inv["parameters"]) if inv["parameters"] else {}
    return view


@action(
    "DescribeInvocations", "ecs:DescribeInvocations",
    "Invocations with their status and per-status instance counts, newest first.",
    Param("InvokeId", "string", "Only this invocation", default=""),
    Param("CommandId", "string", "Only invocations of this command", default=""),
    Param("InstanceId", "string", "Only invocations that target this instance", default=""),
    Param("InvokeStatus", "string", "Only this status", default=""),
    Param("RepeatMode", "string", "Only this repeat mode", default=""),
    Param("Scheduled", "boolean", "Only schedules still active (not Once, not stopped)",
          default=False),
    _PAGE, _page_size(10, 100),
)
async def describe_invocations(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    repo = ctx.services.repo
    if p["InvokeId"]:
        await _invocation(ctx, p["InvokeId"])
    size = p["PageSize"]
    filtered = bool(p["InvokeStatus"])
    rows, total = await repo.list_invocations(
        invocation_id=p["InvokeId"], command_id=p["CommandId"], instance_id=p["InstanceId"],
        repeat_modes=[p["RepeatMode"]] if p["RepeatMode"] else [], scheduled=p["Scheduled"],
        offset=0 if filtered else (p["PageNumber"] - 1) * size,
        limit=10000 if filtered else size)
    counts = await repo.latest_status_counts([r["id"] for r in rows])
    views = []
    for inv in rows:
        targets = await repo.invocation_targets_of(inv["id"])
        if not any(_may(ctx, "ecs:DescribeInvocations",
                        region_arn(ctx, inv["region"], "instance", t["instance_id"]))
                   for t in targets):
            continue
        waiting = inv["repeat_mode"] in REBOOT_MODES and inv["stop_requested_at"] is None \
            and any(not t["done"] for t in targets)
        views.append(_invocation_view(inv, counts[inv["id"]], len(targets), waiting))
    if filtered:
        views = [v for v in views if v["InvocationStatus"] == p["InvokeStatus"]]
        total = len(views)
        views = views[(p["PageNumber"] - 1) * size:p["PageNumber"] * size]
    if p["InvokeId"] and not views:
        raise ApiError(403, "Forbidden.RAM", f"{ctx.principal.arn} is not allowed to perform "
                       f"ecs:DescribeInvocations on the instances of {p['InvokeId']}")
    ctx.resources.extend(v["InvokeId"] for v in views)
    return {"Invocations": views, "TotalCount": total, "PageNumber": p["PageNumber"],
            "PageSize": size}


@action(
    "DescribeInvocationResults", "ecs:DescribeInvocationResults",
    "Status, exit code and output of an invocation on each of its instances.",
    Param("InvokeId", "string", "The invocation", required=True),
    Param("InstanceId", "string", "Only this instance", default=""),
    Param("IncludeHistory", "boolean", "Every run of a schedule, not only the latest",
          default=False),
    _PAGE, _page_size(1000, 1000),
)
async def describe_invocation_results(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    repo = ctx.services.repo
    inv = await _invocation(ctx, p["InvokeId"])
    size = p["PageSize"]
    results, total = await repo.results_of(
        inv["id"], instance_id=p["InstanceId"], include_history=p["IncludeHistory"],
        offset=(p["PageNumber"] - 1) * size, limit=size)
    for r in results:
        authorize_resource(ctx, "ecs:DescribeInvocationResults",
                           region_arn(ctx, inv["region"], "instance", r["instance_id"]))
    keys = [(r["invocation_id"], r["instance_id"], r["repeat"]) for r in results]
    heads = await repo.heads(keys, API_OUTPUT_LIMIT)
    views = []
    for key, r in zip(keys, results, strict=True):
        views.append({
            "InstanceId": r["instance_id"], "Repeats": r["repeat"],
            "InvocationStatus": r["status"], "ExitCode": r["exit_code"],
            "ErrorCode": r["error_code"], "ErrorInfo": r["error_info"],
            "Output": base64.b64encode(heads.get(key, b"")).decode(),
            "OutputSize": r["output_size"],
            "Dropped": r["dropped"] + max(0, r["output_size"] - API_OUTPUT_LIMIT),
            "DispatchTime": iso(r["dispatched_at"]), "StartTime": iso(r["started_at"]),
            "FinishTime": iso(r["finished_at"]),
        })
    counts = (await repo.latest_status_counts([inv["id"]]))[inv["id"]]
    targets = await repo.invocation_targets_of(inv["id"])
    waiting = inv["repeat_mode"] in REBOOT_MODES and inv["stop_requested_at"] is None \
        and any(not t["done"] for t in targets)
    return {
        "InvokeId": inv["id"], "CommandId": inv["command_id"],
        "InvocationStatus": invocation_status(inv, counts, waiting),
        "Username": inv["username"], "RepeatMode": inv["repeat_mode"],
        "CreationTime": iso(inv["created_at"]), "StatusCounts": counts,
        "Results": views, "TotalCount": total, "PageNumber": p["PageNumber"], "PageSize": size,
    }


@action(
    "DescribeInvocationOutput", "ecs:DescribeInvocationResults",
    "A slice of the full output (up to 16 MiB kept) of one instance's run.",
    Param("InvokeId", "string", "The invocation", required=True),
    Param("InstanceId", "string", "The instance", required=True),
    Param("Repeats", "integer", "Which run (default: the latest)", default=0, minimum=0),
    Param("Offset", "integer", "First byte", default=0, minimum=0, maximum=MAX_TASK_OUTPUT),
    Param("Length", "integer", "Bytes (up to 1 MiB)", default=MAX_DOWNLOAD, minimum=1,
          maximum=MAX_DOWNLOAD),
)
async def describe_invocation_output(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    repo = ctx.services.repo
    inv = await _invocation(ctx, p["InvokeId"])
    authorize_resource(ctx, "ecs:DescribeInvocationResults",
                       region_arn(ctx, inv["region"], "instance", p["InstanceId"][:32]))
    rows, _ = await repo.results_of(inv["id"], instance_id=p["InstanceId"],
                                    include_history=bool(p["Repeats"]), limit=10**6)
    rows = [r for r in rows if not p["Repeats"] or r["repeat"] == p["Repeats"]]
    if not rows:
        raise ApiError(404, "InvalidInstance.NotFound",
                       f"{p['InstanceId'][:32]} has no result in {inv['id']}")
    r = rows[-1]
    data = await repo.read_output((inv["id"], r["instance_id"], r["repeat"]), p["Offset"],
                                  p["Length"])
    return {"InvokeId": inv["id"], "InstanceId": r["instance_id"], "Repeats": r["repeat"],
            "InvocationStatus": r["status"], "Offset": p["Offset"],
            "Output": base64.b64encode(data).decode(), "OutputSize": r["output_size"],
            "Dropped": r["dropped"], "Complete": r["status"] not in ("Pending", "Running",
                                                                      "Stopping")}


@action(
    "StopInvocation", "ecs:StopInvocation",
    "Stop an invocation: cancel what has not started, end the process tree of what runs, "
    "and cancel its schedule.",
    Param("InvokeId", "string", "The invocation", required=True),
    Param("InstanceIds", "array", "Only on these instances (default: all)", default=None),
    mutating=True,
)
async def stop_invocation(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    repo = ctx.services.repo
    inv = await _invocation(ctx, p["InvokeId"])
    targets = [t["instance_id"] for t in await repo.invocation_targets_of(inv["id"])]
    chosen = list(dict.fromkeys(p["InstanceIds"] or []))
    unknown = sorted(set(chosen) - set(targets))
    if unknown:
        raise invalid_parameter("InstanceIds", f"{unknown[0][:32]} is not a target of "
                                f"{inv['id']}")
    for iid in chosen or targets:
        authorize_resource(ctx, "ecs:StopInvocation",
                           region_arn(ctx, inv["region"], "instance", iid))
    changed = await ctx.services.commands.stop_invocation(inv, chosen)
    return {"InvokeId": inv["id"], "TasksStopped": changed}
