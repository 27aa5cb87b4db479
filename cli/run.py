"""`porthole run`: RunCommand and wait for every result."""

from __future__ import annotations

import base64
import sys
import time

import click

from cli.common import client, fail, output_option
from cli.output import emit_json, resolve

# --- run -----------------------------------------------------------------------------------


@click.command()
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
