"""`porthole command …` (saved commands) and `porthole invoke` (InvokeCommand)."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from cli.common import client, fail, output_option
from cli.invocations import finish, parse_params, print_started
from cli.output import emit_json, emit_rows, resolve
from cli.run import common_params, invocation_options

TYPES = ["RunShellScript", "RunPowerShellScript", "RunBatScript"]


def _content(content: str | None, path: Path | None, required: bool) -> str | None:
    if content is not None and path is not None:
        fail("give --content or --file, not both")
    if path is not None:
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {path}: {exc}")
    if content is None and required:
        fail("give the script with --content TEXT or --file FILE")
    return content


@click.group()
def command() -> None:
    """Saved commands: create, list, show, modify, delete."""


@command.command("create")
@click.argument("name")
@click.option("--content", default=None, help="The script")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read the script from this file")
@click.option("--type", "command_type", type=click.Choice(TYPES), default="RunShellScript",
              show_default=True)
@click.option("--description", default="")
@click.option("--workdir", default=None, help="Working directory (default: the user's home)")
@click.option("--timeout", default=60, show_default=True, type=click.IntRange(1, 86400))
@click.option("--enable-parameter", is_flag=True, help="Treat {{name}} as parameters")
@click.option("--default", "defaults", multiple=True, metavar="NAME=VALUE",
              help="Default value of a parameter (repeatable; implies --enable-parameter)")
@click.option("--region", default=None, help="Region (default: the profile's)")
@output_option
def command_create(name: str, content: str | None, path: Path | None, command_type: str,
                   description: str, workdir: str | None, timeout: int,
                   enable_parameter: bool, defaults: tuple[str, ...], region: str | None,
                   output: str | None) -> None:
    """Save a command (CreateCommand); prints its CommandId."""
    c = client()
    reply = c.call("CreateCommand", Name=name, CommandContent=_content(content, path, True),
                   Type=command_type, Description=description, WorkingDir=workdir,
                   Timeout=timeout, EnableParameter=enable_parameter or bool(defaults),
                   DefaultParameters=parse_params(defaults),
                   RegionId=region or c.profile.region or None)
    if resolve(output) == "json":
        emit_json({"CommandId": reply["CommandId"]})
    else:
        click.echo(reply["CommandId"])


def _decode(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["CommandContent"] = base64.b64decode(r["CommandContent"]).decode("utf-8", "replace")
    return rows


@command.command("list")
@click.option("--name", default=None, help="Only this name (a trailing * matches a prefix)")
@click.option("--type", "command_type", type=click.Choice(TYPES), default=None)
@click.option("--region", default=None)
@click.option("--page", default=1, show_default=True, type=click.IntRange(1))
@click.option("--page-size", default=20, show_default=True, type=click.IntRange(1, 100))
@output_option
def command_list(name: str | None, command_type: str | None, region: str | None, page: int,
                 page_size: int, output: str | None) -> None:
    """List saved commands (DescribeCommands)."""
    reply = client().call("DescribeCommands", Name=name, Type=command_type, RegionId=region,
                          PageNumber=page, PageSize=page_size)
    rows = _decode(reply["Commands"])
    if resolve(output) == "json":
        emit_json({"Commands": rows, "TotalCount": reply["TotalCount"]})
    else:
        for r in rows:
            r["Parameters"] = ",".join(r["ParameterNames"])
        emit_rows("table", rows, ["CommandId", "Name", "Type", "Timeout", "Parameters",
                                  "InvokeTimes", "CreationTime", "Description"], "Commands")


@command.command("show")
@click.argument("command_id")
@output_option
def command_show(command_id: str, output: str | None) -> None:
    """A saved command with its script."""
    rows = client().call("DescribeCommands", CommandId=command_id)["Commands"]
    if not rows:
        fail(f"command {command_id} not found")
    row = _decode(rows)[0]
    if resolve(output) == "json":
        emit_json(row)
        return
    for key, value in row.items():
        if key != "CommandContent":
            click.echo(f"{key}: {value}")
    click.echo("CommandContent:")
    click.echo(row["CommandContent"], nl=not row["CommandContent"].endswith("\n"))


@command.command("modify")
@click.argument("command_id")
@click.option("--name", default=None)
@click.option("--description", default=None)
@click.option("--content", default=None, help="New script")
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read the new script from this file")
@click.option("--workdir", default=None)
@click.option("--timeout", default=None, type=click.IntRange(1, 86400))
@click.option("--enable-parameter/--disable-parameter", default=None)
@click.option("--default", "defaults", multiple=True, metavar="NAME=VALUE",
              help="Replace the default values (repeatable)")
@output_option
def command_modify(command_id: str, name: str | None, description: str | None,
                   content: str | None, path: Path | None, workdir: str | None,
                   timeout: int | None, enable_parameter: bool | None,
                   defaults: tuple[str, ...], output: str | None) -> None:
    """Change a saved command (ModifyCommand)."""
    client().call("ModifyCommand", CommandId=command_id, Name=name, Description=description,
                  CommandContent=_content(content, path, False), WorkingDir=workdir,
                  Timeout=timeout, EnableParameter=enable_parameter,
                  DefaultParameters=parse_params(defaults))
    if resolve(output) == "json":
        emit_json({"CommandId": command_id})
    else:
        click.echo(f"modified {command_id}")


@command.command("delete")
@click.argument("command_id")
@output_option
def command_delete(command_id: str, output: str | None) -> None:
    """Delete a saved command (DeleteCommand); its invocations stay."""
    client().call("DeleteCommand", CommandId=command_id)
    if resolve(output) == "json":
        emit_json({"CommandId": command_id})
    else:
        click.echo(f"deleted {command_id}")


@click.command()
@click.argument("command_id")
@click.argument("instance_ids", nargs=-1, required=True)
@click.option("--timeout", default=None, type=click.IntRange(1, 86400),
              help="Seconds before the script is killed (default: the command's)")
@click.option("--workdir", default=None, help="Working directory (default: the command's)")
@invocation_options
@output_option
def invoke(command_id: str, instance_ids: tuple[str, ...], timeout: int | None,
           workdir: str | None, params: tuple[str, ...], user: str | None, repeat: str,
           frequency: str | None, max_concurrency: str | None, max_errors: str | None,
           delivery_timeout: int | None, no_wait: bool, output: str | None) -> None:
    """Run a saved command on instances (InvokeCommand); waits like `porthole run`."""
    c = client()
    common = common_params(params, user, repeat, frequency, max_concurrency, max_errors,
                           delivery_timeout)
    invoke_id = c.call("InvokeCommand", CommandId=command_id, InstanceIds=list(instance_ids),
                       Timeout=timeout, WorkingDir=workdir, **common)["InvokeId"]
    if no_wait or common["RepeatMode"] != "Once":
        print_started(invoke_id, output)
        return
    finish(c, invoke_id, output, (timeout or 86400) + (delivery_timeout or 600) + 60)
