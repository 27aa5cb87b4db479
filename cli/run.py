"""`porthole run`: RunCommand, then wait for every result (or print the InvokeId at once)."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import client, fail, output_option
from cli.invocations import finish, parse_params, print_started

REPEAT_MODES = ["Once", "Period", "NextRebootOnly", "EveryReboot"]


def invocation_options(f):  # type: ignore[no-untyped-def]
    """Options that RunCommand and InvokeCommand share."""
    for option in reversed([
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                     help="Value of a {{NAME}} parameter (repeatable)"),
        click.option("--user", default=None, help="Run as this user (default root)"),
        click.option("--repeat", type=click.Choice(REPEAT_MODES), default="Once",
                     show_default=True, help="Once, Period (with --frequency), NextRebootOnly "
                     "or EveryReboot"),
        click.option("--frequency", default=None,
                     help="With --repeat Period: rate(5m), at(2030-01-01 08:00:00 UTC) or a "
                     "cron expression with an optional time zone"),
        click.option("--max-concurrency", default=None, metavar="N|N%",
                     help="Instances running at once"),
        click.option("--max-errors", default=None, metavar="N|N%",
                     help="Stop sending to more instances after this many failed"),
        click.option("--delivery-timeout", default=None, type=click.IntRange(0, 7 * 86400),
                     help="Seconds an offline instance may take to come back for its task "
                     "(default 600; 0 fails offline instances at once)"),
        click.option("--no-wait", is_flag=True, help="Print the InvokeId and return at once"),
    ]):
        f = option(f)
    return f


def common_params(params: tuple[str, ...], user: str | None, repeat: str,
                  frequency: str | None, max_concurrency: str | None, max_errors: str | None,
                  delivery_timeout: int | None) -> dict[str, object]:
    if frequency and repeat != "Period":
        repeat = "Period"
    if repeat == "Period" and not frequency:
        fail("--repeat Period needs --frequency, e.g. --frequency 'rate(5m)'")
    return {"Parameters": parse_params(params), "Username": user, "RepeatMode": repeat,
            "Frequency": frequency, "MaxConcurrency": max_concurrency,
            "MaxErrors": max_errors, "DeliveryTimeout": delivery_timeout}


@click.command()
@click.argument("instance_ids", nargs=-1, required=True)
@click.option("--script", default=None, help="Shell script to run")
@click.option("--script-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Read the script from this file")
@click.option("--timeout", default=60, show_default=True, type=click.IntRange(1, 86400),
              help="Seconds before the script is killed")
@click.option("--workdir", default=None, help="Working directory (default: the user's home)")
@click.option("--enable-parameter", is_flag=True,
              help="Treat {{name}} in the script as parameters (implied by --param)")
@click.option("--keep-command", "keep", default=None, metavar="NAME",
              help="Also save the script as a command with this name")
@invocation_options
@output_option
def run(instance_ids: tuple[str, ...], script: str | None, script_file: Path | None,
        timeout: int, workdir: str | None, enable_parameter: bool, keep: str | None,
        params: tuple[str, ...], user: str | None, repeat: str, frequency: str | None,
        max_concurrency: str | None, max_errors: str | None, delivery_timeout: int | None,
        no_wait: bool, output: str | None) -> None:
    """Run a script on instances, wait, print each output and exit code (RunCommand)."""
    if (script is None) == (script_file is None):
        fail("give the script with --script TEXT or --script-file FILE")
    if script_file is not None:
        try:
            script = script_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {script_file}: {exc}")
    c = client()
    common = common_params(params, user, repeat, frequency, max_concurrency, max_errors,
                           delivery_timeout)
    reply = c.call("RunCommand", InstanceIds=list(instance_ids), CommandContent=script,
                   Timeout=timeout, WorkingDir=workdir,
                   EnableParameter=enable_parameter or bool(params) or None,
                   KeepCommand=True if keep else None, Name=keep, **common)
    invoke_id = reply["InvokeId"]
    extra = {"CommandId": reply["CommandId"]} if "CommandId" in reply else {}
    if no_wait or common["RepeatMode"] != "Once":
        print_started(invoke_id, output, **extra)
        return
    finish(c, invoke_id, output, timeout + (delivery_timeout or 600) + 60)
