"""API actions: read and verify the hash-chained audit log."""

from __future__ import annotations

import datetime
from typing import Any

from server.api import Context, Param, action, authorize_resource, iso
from server.errors import invalid_parameter


def _trail_arn(ctx: Context) -> str:
    return f"acs:actiontrail::{ctx.services.config.account_id}:trail/porthole"


def _parse_time(value: str) -> float:
    try:
        when = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter("StartTime", f"{value[:64]!r} is not an ISO 8601 time such as "
                                             "2026-01-31T08:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _event_view(row: dict[str, Any]) -> dict[str, Any]:
    return {"Seq": row["seq"], "EventTime": iso(row["at"]), "RequestId": row["request_id"],
            "Principal": row["principal"], "Action": row["action"], "Resource": row["resource"],
            "SourceIp": row["source_ip"], "Outcome": row["outcome"], "Detail": row["detail"],
            "Hash": row["hash"]}


@action("LookupAuditEvents", "actiontrail:LookupEvents",
        "Audit log entries, newest first: every API call (allowed, denied or failed), session "
        "and agent events.",
        Param("StartTime", "string", "Only entries at or after this ISO 8601 time"),
        Param("Principal", "string", "Only this principal (user/NAME, or NAME)"),
        Param("EventAction", "string", "Only this action (e.g. ecs:RunCommand, SessionStart)"),
        Param("Outcome", "string", "Only this outcome", enum=("Allowed", "Denied", "Error")),
        Param("MaxResults", "integer", "Page size", default=100, minimum=1, maximum=1000),
        Param("NextToken", "string", "From the previous page"))
async def lookup_events(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "actiontrail:LookupEvents", _trail_arn(ctx))
    before = None
    if p["NextToken"]:
        if not p["NextToken"].isdigit() or len(p["NextToken"]) > 18:
            raise invalid_parameter("NextToken", "is not a token from a previous page")
        before = int(p["NextToken"])
    rows = await ctx.services.repo.audit_entries(
        since=_parse_time(p["StartTime"]) if p["StartTime"] else None,
        principal=p["Principal"], action=p["EventAction"], outcome=p["Outcome"],
        limit=p["MaxResults"], before_seq=before)
    next_token = str(rows[-1]["seq"]) if len(rows) == p["MaxResults"] else None
    return {"Events": [_event_view(r) for r in rows], "NextToken": next_token}


@action("VerifyAuditLog", "actiontrail:VerifyAuditLog",
        "Check the whole hash chain: an edited, removed or reordered entry is reported with "
        "its sequence number. Anchors (Seq and Hash from an earlier verification) also catch "
        "entries removed from the end.",
        Param("Anchors", "array", 'Earlier heads: [{"Seq": n, "Hash": hex}]', items="object"))
async def verify_log(ctx: Context, p: dict[str, Any]) -> dict[str, Any]:
    authorize_resource(ctx, "actiontrail:VerifyAuditLog", _trail_arn(ctx))
    anchors: dict[int, str] = {}
    for i, anchor in enumerate(p["Anchors"] or []):
        seq, digest = anchor.get("Seq"), anchor.get("Hash")
        if not (isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**62
                and isinstance(digest, str) and len(digest) == 64):
            raise invalid_parameter(f"Anchors.{i + 1}", 'must be {"Seq": integer, "Hash": '
                                                        "64 hex characters}")
        anchors[seq] = digest
    if len(anchors) > 100:
        raise invalid_parameter("Anchors", "give at most 100")
    return await ctx.services.repo.verify_audit(anchors)
