"""``porthole``: the operator CLI."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from cli import __version__
from cli.client import ApiError, ConnectError
from cli.common import client, fail, output_option
from cli.config import ConfigError, Profile, load_profile, save_profile
from cli.output import emit_json, emit_rows, resolve


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


from cli.audit import audit  # noqa: E402
from cli.commands_cli import command as command_group  # noqa: E402
from cli.commands_cli import invoke  # noqa: E402
from cli.copy import cp  # noqa: E402
from cli.forward import forward, ssh_config, ssh_proxy  # noqa: E402
from cli.iam import iam, instances_tag  # noqa: E402
from cli.invocations import invocations  # noqa: E402
from cli.run import run  # noqa: E402  (command modules attach to the root group)
from cli.send_file import send_file  # noqa: E402
from cli.sessions import session, sessions, settings  # noqa: E402

instances.add_command(instances_tag)
for command in (run, session, sessions, settings, forward, ssh_proxy, ssh_config, cp,
                command_group, invoke, invocations, send_file, iam, audit):
    cli.add_command(command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
