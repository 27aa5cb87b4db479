"""API actions: RunCommand and its results."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from server.api import (
    Context,
    Param,
    action,
    authorize_resource,
    instance_row,
    iso,
    region_arn,
)
from server.commands import API_OUTPUT_LIMIT, aggregate_status
from server.errors import ApiError, invalid_parameter

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
    rows = [await instance_row(ctx, iid) for iid in ids]
    for row in rows:
        authorize_resource(ctx, "ecs:RunCommand",
                           region_arn(ctx, row["region"], "instance", row["id"]),
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
        authorize_resource(ctx, "ecs:DescribeInvocationResults",
                   region_arn(ctx, region, "instance", r["instance_id"]))
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
