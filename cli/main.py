"""``porthole``: the operator CLI."""

from __future__ import annotations

import base64
import json
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import click

from cli import __version__
from cli.client import ApiError, Client, ConnectError
from cli.config import ConfigError, Profile, load_profile, save_profile
from cli.output import OUTPUT_CHOICES, emit_json, emit_rows, resolve

output_option = click.option("--output", "-o", type=click.Choice(OUTPUT_CHOICES), default=None,
                             help="json (default when not a terminal), table or text")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"porthole: {message}", err=True)
    sys.exit(code)


class Cli(click.Group):
    """Turns every expected error into one line on stderr and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            fail(f"{exc.message} ({exc.code})")
        except (ConnectError, ConfigError) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            fail("interrupted", 130)


@click.group(cls=Cli)
@click.version_option(__version__, prog_name="porthole")
@click.option("--profile", default="default", envvar="PORTHOLE_PROFILE", show_default=True,
              help="Profile in ~/.porthole/config")
@click.pass_context
def cli(ctx: click.Context, profile: str) -> None:
    """Porthole: shells, commands and ports on instances with no inbound port open."""
    ctx.obj = profile


def client() -> Client:
    return Client(load_profile(click.get_current_context().find_root().obj))


# --- configure -----------------------------------------------------------------------------


@cli.command()
@click.option("--server", help="https://HOST:PORT of porthole-server")
@click.option("--ca-file", type=click.Path(dir_okay=False, path_type=Path),
              help="CA certificate that signed the server's certificate")
@click.option("--access-key-id")
@click.option("--access-key-secret")
@click.option("--credentials-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='JSON file with {"AccessKeyId", "AccessKeySecret"} (e.g. admin.json)')
@click.option("--region", help="Default region")
@click.pass_context
def configure(ctx: click.Context, server: str | None, ca_file: Path | None,
              access_key_id: str | None, access_key_secret: str | None,
              credentials_file: Path | None, region: str | None) -> None:
    """Write a profile to ~/.porthole/config (mode 0600)."""
    name = ctx.find_root().obj
    try:
        current = load_profile(name)
    except ConfigError:
        current = Profile()
    if credentials_file:
        try:
            creds = json.loads(credentials_file.read_text())
            access_key_id = access_key_id or creds["AccessKeyId"]
            access_key_secret = access_key_secret or creds["AccessKeySecret"]
        except (OSError, ValueError, KeyError, TypeError):
            fail(f"{credentials_file} does not hold AccessKeyId and AccessKeySecret")
    values = {"server": server, "ca_file": str(ca_file.resolve()) if ca_file else None,
              "access_key_id": access_key_id, "access_key_secret": access_key_secret,
              "region": region}
    interactive = sys.stdin.isatty()
    for key, value in values.items():
        if value is None and interactive:
            value = click.prompt(key.replace("_", " "), default=getattr(current, key) or "",
                                 hide_input=key == "access_key_secret", show_default=key != (
                                     "access_key_secret"))
        if value is not None:
            setattr(current, key, value)
    path = save_profile(current, name)
    click.echo(f"wrote profile {name!r} to {path}")


# --- activations ---------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """'24h', '30m', '7d', '90s' or plain hours -> hours."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a duration like 24h, 30m, 7d or 90s")
    value, unit = float(m.group(1)), m.group(2) or "h"
    return value * {"s": 1 / 3600, "m": 1 / 60, "h": 1, "d": 24}[unit]


@cli.group()
def activation() -> None:
    """Activation codes that register agents."""


@activation.command("create")
@click.option("--region", default=None, help="Region (default: the profile's)")
@click.option("--count", default=10, show_default=True, help="How many agents may register")
@click.option("--expires", default="24h", show_default=True, help="Lifetime, e.g. 24h, 30m, 7d")
@click.option("--description", default="")
@output_option
def activation_create(region: str | None, count: int, expires: str, description: str,
                      output: str | None) -> None:
    """Create an activation (id and code) for `porthole-agent register`."""
    c = client()
    region = region or c.profile.region
    if not region:
        fail("no region given; pass --region or set one with `porthole configure --region`")
    reply = c.call("CreateActivation", Region=region, InstanceCount=count,
                   TimeToLiveInHours=parse_duration(expires), Description=description)
    reply.pop("RequestId", None)
    if resolve(output) == "json":
        emit_json(reply)
    else:
        for k, v in reply.items():
            click.echo(f"{k}: {v}")


@activation.command("list")
@output_option
def activation_list(output: str | None) -> None:
    """List activations and how often each was used."""
    rows = client().call("DescribeActivations")["Activations"]
    emit_rows(resolve(output), rows, ["ActivationId", "Region", "RegisteredCount",
                                      "InstanceCount", "ExpiresAt", "Description"], "Activations")


# --- instances -----------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--region", default=None, help="Only this region")
@output_option
@click.pass_context
def instances(ctx: click.Context, region: str | None, output: str | None) -> None:
    """List managed instances (or use a subcommand)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = client().call("DescribeManagedInstances", Region=region)["Instances"]
    emit_rows(resolve(output), rows, ["InstanceId", "Hostname", "Region", "OsName",
                                      "AgentVersion", "AgentStatus", "LastHeartbeatTime"],
              "Instances")


@instances.command("deregister")
@click.argument("instance_id")
def instances_deregister(instance_id: str) -> None:
    """Deregister an instance; its agent is cut off and stops retrying."""
    client().call("DeregisterManagedInstance", InstanceId=instance_id)
    click.echo(f"deregistered {instance_id}")


# --- run -----------------------------------------------------------------------------------


@cli.command()
@click.argument("instance_ids", nargs=-1, required=True)
@click.option("--script", required=True, help="Shell script to run")
@click.option("--user", default=None, help="Run as this user (default root)")
@click.option("--timeout", default=60, show_default=True, type=click.IntRange(1, 86400),
              help="Seconds before the script is killed")
@click.option("--workdir", default=None, help="Working directory (default: the user's home)")
@output_option
def run(instance_ids: tuple[str, ...], script: str, user: str | None, timeout: int,
        workdir: str | None, output: str | None) -> None:
    """Run a script on instances, wait, print each output and exit code (RunCommand)."""
    c = client()
    invoke_id = c.call("RunCommand", InstanceIds=list(instance_ids), CommandContent=script,
                       Username=user, Timeout=timeout, WorkingDir=workdir)["InvokeId"]
    deadline = time.monotonic() + timeout + 60
    try:
        while True:
            reply = c.call("DescribeInvocationResults", InvokeId=invoke_id)
            if reply["InvocationStatus"] not in ("Pending", "Running"):
                break
            if time.monotonic() > deadline:
                fail(f"{invoke_id} still {reply['InvocationStatus']} after {timeout + 60} s; "
                     f"check later with the invocation id")
            time.sleep(0.2)
    except KeyboardInterrupt:
        fail(f"stopped waiting; the invocation {invoke_id} goes on", 130)
    results = reply["Results"]
    for r in results:
        r["Output"] = base64.b64decode(r["Output"]).decode("utf-8", "replace")
    if resolve(output) == "json":
        reply.pop("RequestId", None)
        emit_json(reply)
    else:
        for r in results:
            code = "" if r["ExitCode"] is None else f" exit {r['ExitCode']}"
            error = f" {r['ErrorCode']}" if r["ErrorCode"] else ""
            click.secho(f"== {r['InstanceId']}: {r['InvocationStatus']}{code}{error}",
                        bold=True, err=False)
            if r["Output"]:
                click.echo(r["Output"], nl=not r["Output"].endswith("\n"))
            if r["Dropped"]:
                click.echo(f"[{r['Dropped']} more bytes of output not shown]")
            if r["ErrorInfo"] and r["ErrorCode"] != "ExitCodeNonzero":
                click.echo(f"   {r['ErrorInfo']}")
    if any(r["InvocationStatus"] != "Success" for r in results):
        sys.exit(1)


# --- terminal sessions ---------------------------------------------------------------------


@cli.command()
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


@cli.group()
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


@cli.group()
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
