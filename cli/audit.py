"""``porthole audit``: read and verify the server's hash-chained audit log."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import click

from cli.common import client, fail, output_option
from cli.config import config_path
from cli.output import emit_json, emit_rows, resolve

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def since_to_iso(text: str) -> str:
    """'90s', '30m', '24h', '7d' (ago) or an ISO 8601 time -> ISO 8601 UTC."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    if m:
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(
            seconds=int(m.group(1)) * _UNITS[m.group(2)])
    else:
        try:
            when = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a duration (30m, 24h, 7d) or an ISO "
                                     "8601 time") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@click.group()
def audit() -> None:
    """The audit log: every API call, session and agent event, hash-chained."""


@audit.command("list")
@click.option("--since", default=None, help="Only newer entries: 30m, 24h, 7d or ISO time")
@click.option("--principal", default=None, help="Only this principal (user/NAME or NAME)")
@click.option("--action", default=None, help="Only this action, e.g. ecs:RunCommand")
@click.option("--outcome", type=click.Choice(["Allowed", "Denied", "Error"]), default=None)
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@output_option
def audit_list(since: str | None, principal: str | None, action: str | None,
               outcome: str | None, limit: int, output: str | None) -> None:
    """List audit entries, newest first."""
    c = client()
    start = since_to_iso(since) if since else None
    events: list[dict[str, Any]] = []
    token = None
    while len(events) < limit:
        reply = c.call("LookupAuditEvents", StartTime=start, Principal=principal,
                       EventAction=action, Outcome=outcome,
                       MaxResults=min(1000, limit - len(events)), NextToken=token)
        events += reply["Events"]
        token = reply.get("NextToken")
        if not token:
            break
    emit_rows(resolve(output), events, ["Seq", "EventTime", "Principal", "Action", "Resource",
                                        "SourceIp", "Outcome"], "Events")


def _anchor_file(server: str) -> Path:
    digest = hashlib.sha256(server.encode()).hexdigest()[:24]
    return config_path().parent / "audit-anchors" / f"{digest}.json"


def _load_anchors(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
        return [a for a in data if isinstance(a, dict)][-20:] if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def _save_anchors(path: Path, anchors: list[dict[str, Any]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(anchors[-20:]))
        os.replace(tmp, path)
    except OSError:
        pass


@audit.command("verify")
@click.option("--no-anchors", is_flag=True,
              help="Do not compare with (or remember) heads seen by earlier runs")
@output_option
def audit_verify(no_anchors: bool, output: str | None) -> None:
    """Check the hash chain: exits 1 and names each edited, removed or reordered entry.

    Heads seen by earlier runs are remembered (~/.porthole/audit-anchors/), so entries
    removed from the end since then are caught too."""
    c = client()
    path = _anchor_file(c.profile.server)
    anchors = [] if no_anchors else _load_anchors(path)
    reply = c.call("VerifyAuditLog", Anchors=anchors or None)
    reply.pop("RequestId", None)
    if reply["Valid"] and reply["Count"] and not no_anchors:
        _save_anchors(path, [*anchors, {"Seq": reply["HeadSeq"], "Hash": reply["HeadHash"]}])
    if resolve(output) == "json":
        emit_json(reply)
    elif reply["Valid"]:
        click.echo(f"audit log intact: {reply['Count']} entries, head {reply['HeadSeq']} "
                   f"{reply['HeadHash'][:16]}")
    else:
        for p in reply["Problems"]:
            click.echo(f"entry {p['Seq']}: {p['Problem']}")
    if not reply["Valid"]:
        fail(f"audit log is NOT intact: {len(reply['Problems'])} problem(s), first at entry "
             f"{reply['Problems'][0]['Seq']}")
