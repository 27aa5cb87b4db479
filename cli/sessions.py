"""`porthole session`, `sessions` and `settings`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from cli.client import ApiError
from cli.common import client, fail, output_option
from cli.output import emit_json, emit_rows, resolve

# --- terminal sessions ---------------------------------------------------------------------


@click.command()
@click.argument("instance_id")
@click.option("--user", default=None, help="Log in as this user (default: porthole-user)")
@click.option("--command", "command", default=None,
              help="Run this command on a PTY instead of a login shell")
@click.option("--reason", default="", help="Why (kept in the audit log)")
@click.option("--resume-timeout", default=60.0, show_default=True,
              help="Seconds to keep reconnecting after the link breaks")
def session(instance_id: str, user: str | None, command: str | None, reason: str,
            resume_timeout: float) -> None:
    """Open an interactive shell on an instance (exit with the remote status; ~. ends it)."""
    import os

    from cli.session import TerminalSession
    from cli.terminal import window_size

    c = client()
    cols, rows = window_size(1 if os.isatty(1) else 0)
    start = c.call("StartTerminalSession", InstanceId=instance_id, Username=user,
                   CommandLine=command, Reason=reason, Cols=cols, Rows=rows,
                   Term=os.environ.get("TERM", "xterm-256color"))
    c.close()
    status, message = TerminalSession(c, start, resume_timeout).run()
    if message:
        click.echo(f"porthole: {message}", err=True)
    sys.exit(status)


@click.group()
def sessions() -> None:
    """List, end, replay and export terminal sessions."""


@sessions.command("list")
@click.option("--active", is_flag=True, help="Only sessions still open")
@output_option
def sessions_list(active: bool, output: str | None) -> None:
    """Sessions with owner, instance, user, times and outcome."""
    rows = client().call("DescribeSessions", Active=active)["Sessions"]
    emit_rows(resolve(output), rows, ["SessionId", "InstanceId", "Owner", "Username", "Status",
                                      "StartTime", "EndTime", "ExitCode", "Reason"], "Sessions")


@sessions.command("terminate")
@click.argument("session_id")
def sessions_terminate(session_id: str) -> None:
    """End an open session; its operator sees who ended it."""
    client().call("TerminateSession", SessionId=session_id)
    click.echo(f"terminated {session_id}")


def _recording(session_id: str) -> bytes:
    c = client()
    path = f"/api/v1/sessions/{session_id}/recording"
    status, body = c.raw("GET", path, b"", c.signed_headers("GET", path, b""))
    if status != 200:
        try:
            error = json.loads(body)
            raise ApiError(status, error["Code"], error["Message"])
        except (ValueError, KeyError, TypeError):
            raise ApiError(status, "Error", f"HTTP {status}") from None
    return body


@sessions.command("export")
@click.argument("session_id")
@click.option("--file", "target", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Where to write (default: SESSION_ID.cast)")
def sessions_export(session_id: str, target: Path | None) -> None:
    """Write the recording as an asciicast v2 file (plays with `asciinema play`)."""
    target = target or Path(f"{session_id}.cast")
    target.write_bytes(_recording(session_id))
    click.echo(f"wrote {target}")


@sessions.command("play")
@click.argument("session_id")
@click.option("--speed", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Playback speed factor")
@click.option("--max-wait", default=None, type=float,
              help="Cap pauses at this many seconds")
def sessions_play(session_id: str, speed: float, max_wait: float | None) -> None:
    """Replay a recording in this terminal with its original timing."""
    lines = _recording(session_id).decode("utf-8", "replace").splitlines()
    elapsed = 0.0
    out = sys.stdout
    for line in lines[1:]:
        try:
            at, kind, text = json.loads(line)
        except (ValueError, TypeError):
            continue
        pause = max(0.0, float(at) - elapsed) / speed
        if max_wait is not None:
            pause = min(pause, max_wait)
        time.sleep(pause)
        elapsed = float(at)
        if kind == "o":
            out.write(text)
            out.flush()


# --- settings ------------------------------------------------------------------------------


@click.group()
def settings() -> None:
    """Per-region Session Manager settings."""


@settings.command("session-manager")
@click.option("--region", required=True)
@click.option("--enable/--disable", default=None, help="Switch Session Manager on or off")
@click.option("--idle-timeout", type=click.IntRange(1, 60), default=None,
              help="Minutes of no input before a session is ended (1-60)")
@click.option("--max-duration", type=click.IntRange(0, 1440), default=None,
              help="Maximum session length in minutes (1-1440; 0: no limit)")
@output_option
def settings_session_manager(region: str, enable: bool | None, idle_timeout: int | None,
                             max_duration: int | None, output: str | None) -> None:
    """Change Session Manager settings of a region. Open sessions are not ended."""
    config: dict[str, Any] = {}
    if enable is not None:
        config["SessionManagerEnabled"] = enable
    if idle_timeout is not None:
        config["IdleTimeout"] = idle_timeout
    if max_duration is not None:
        config["MaxSessionDuration"] = max_duration
    if not config:
        fail("nothing to change; give --enable, --disable, --idle-timeout or --max-duration")
    reply = client().call("ModifyCloudAssistantSettings", RegionId=region,
                          SessionManagerConfig=config)
    _show_settings([reply], resolve(output))


@settings.command("show")
@click.option("--region", default=None)
@output_option
def settings_show(region: str | None, output: str | None) -> None:
    """Show Session Manager settings of every region (or one)."""
    _show_settings(client().call("DescribeCloudAssistantSettings", RegionId=region)["Settings"],
                   resolve(output))


def _show_settings(rows: list[dict[str, Any]], output: str) -> None:
    for row in rows:
        row.pop("RequestId", None)
    if output == "json":
        emit_json({"Settings": rows})
        return
    flat = [{"RegionId": r["RegionId"],
             "SessionManager": "enabled" if r["SessionManagerConfig"]["SessionManagerEnabled"]
             else "disabled",
             "IdleTimeout": f"{r['SessionManagerConfig']['IdleTimeout']} min",
             "MaxSessionDuration": f"{r['SessionManagerConfig']['MaxSessionDuration']} min"
             if r["SessionManagerConfig"]["MaxSessionDuration"] else "none"} for r in rows]
    emit_rows(output, flat, ["RegionId", "SessionManager", "IdleTimeout",
                             "MaxSessionDuration"], "Settings")
