"""API actions: activations and managed instances."""

from __future__ import annotations

import time
from typing import Any

from proto.ids import new_activation
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
from server.errors import ApiError

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
    await check_region(ctx, p["Region"])
    activation_id, code = new_activation()
    authorize_resource(ctx, "ecs:CreateActivation", region_arn(ctx, p["Region"], "activation",
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
    authorize_resource(ctx, "ecs:DescribeActivations", region_arn(ctx, "*", "activation", "*"))
    rows = await ctx.services.repo.list_activations()
    return {"Activations": [{
        "ActivationId": r["id"], "Region": r["region"], "Description": r["description"],
        "InstanceCount": r["usage_limit"], "RegisteredCount": r["usage_count"],
        "ExpiresAt": iso(r["expires_at"]), "CreationTime": iso(r["created_at"]),
        "Expired": r["expires_at"] < time.time(),
    } for r in rows]}


# --- managed instances ---------------------------------------------------------------------


def _instance_view(ctx: Context, row: dict[str, Any]) -> dict[str, Any]:
    gateway = ctx.services.gateway
    here = gateway.link(row["id"]) is not None
    online = here or bool(row["connected"] and gateway.live_other(row["replica"]))
    extra: dict[str, Any] = {}
    if gateway.bus is not None:  # replicas: say which one holds the agent
        extra["Replica"] = gateway.replica if here else row["replica"] if online else ""
    return {**extra,
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
        arn = region_arn(ctx, row["region"], "instance", row["id"])
        try:
            authorize(ctx.principal, "ecs:DescribeInstances", arn)
        except ApiError:
            continue
        visible.append(_instance_view(ctx, row))
    ctx.resources.append(region_arn(ctx, p["Region"] or "*", "instance", "*"))
    return {"Instances": visible, "TotalCount": len(visible)}



@action(
    "DeregisterManagedInstance", "ecs:DeregisterManagedInstance",
    "Deregister an instance: its agent is disconnected and can no longer connect.",
    Param("InstanceId", "string", "The instance", required=True),
    mutating=True,
)
async def deregister_instance(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    row = await instance_row(ctx, p["InstanceId"])
    authorize_resource(ctx, "ecs:DeregisterManagedInstance",
               region_arn(ctx, row["region"], "instance", row["id"]))
    await ctx.services.repo.deregister_instance(row["id"])
    link = ctx.services.gateway.link(row["id"])
    if link is not None:
        await link.ws.close(code=1008, message=b"InstanceDeregistered")
    return {"InstanceId": row["id"]}
