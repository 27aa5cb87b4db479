"""`porthole invocations`: list, show, stop, wait for and download invocations; the wait loop
with its progress bar that `run`, `invoke` and `send-file` share."""

from __future__ import annotations

import base64
import sys
import time
from typing import Any

import click

from cli.client import Client
from cli.common import client, fail, output_option
from cli.output import emit_json, emit_rows, resolve

ACTIVE = ("Pending", "Running", "Stopping")
FAILED = ("Failed", "Error", "Timeout", "Cancelled", "Terminated", "Invalid")


def parse_params(pairs: tuple[str, ...]) -> dict[str, str] | None:
    """``k=v`` pairs (the value may contain '='); None when there are none."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        out[key] = value
    return out or None


def _summary(counts: dict[str, int]) -> tuple[int, int, int, int]:
    done = counts.get("Success", 0)
    failed = sum(counts.get(s, 0) for s in FAILED)
    running = counts.get("Running", 0) + counts.get("Stopping", 0)
    return done, failed, running, counts.get("Pending", 0)


def wait_for(c: Client, invoke_id: str, output: str, deadline_s: float) -> dict[str, Any]:
    """Poll until the invocation ends; a progress bar on a terminal (not with JSON output)."""
    show = output != "json" and sys.stderr.isatty()
    deadline = time.monotonic() + deadline_s
    progress = task = None
    if show:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), console=Console(stderr=True),
                            transient=True)
        progress.start()
    delay = 0.1
    try:
        while True:
            inv = c.call("DescribeInvocations", InvokeId=invoke_id)["Invocations"][0]
            done, failed, running, pending = _summary(inv["StatusCounts"])
            if progress is not None:
                text = (f"{invoke_id} {inv['InvocationStatus']}: {done} done, {failed} failed, "
                        f"{running} running, {pending} pending")
                if task is None:
                    task = progress.add_task(text, total=inv["InstanceCount"])
                progress.update(task, description=text, completed=done + failed,
                                total=inv["InstanceCount"])
            if inv["InvocationStatus"] not in ("Pending", "Running", "Stopping"):
                return inv
            if time.monotonic() > deadline:
                fail(f"{invoke_id} still {inv['InvocationStatus']} after {deadline_s:.0f} s; "
                     f"see `porthole invocations show {invoke_id}`")
            time.sleep(delay)
            delay = min(1.0, delay * 1.5)
    except KeyboardInterrupt:
        fail(f"stopped waiting; the invocation {invoke_id} goes on "
             f"(`porthole invocations stop {invoke_id}` stops it)", 130)
    finally:
        if progress is not None:
            progress.stop()


def all_results(c: Client, invoke_id: str, history: bool = False,
                instance: str | None = None) -> dict[str, Any]:
    page, results = 1, []
    while True:
        reply = c.call("DescribeInvocationResults", InvokeId=invoke_id, PageNumber=page,
                       PageSize=1000, IncludeHistory=history or None, InstanceId=instance)
        results += reply["Results"]
        if len(results) >= reply["TotalCount"] or not reply["Results"]:
            break
        page += 1
    reply.pop("RequestId", None)
    for key in ("PageNumber", "PageSize"):
        reply.pop(key, None)
    for r in results:
        r["Output"] = base64.b64decode(r["Output"]).decode("utf-8", "replace")
    reply["Results"] = results
    return reply


def print_results(reply: dict[str, Any], output: str) -> None:
    if output == "json":
        emit_json(reply)
        return
    for r in reply["Results"]:
        code = "" if r["ExitCode"] is None else f" exit {r['ExitCode']}"
        error = f" {r['ErrorCode']}" if r["ErrorCode"] else ""
        repeat = f" run {r['Repeats']}" if r.get("Repeats", 1) != 1 else ""
        click.secho(f"== {r['InstanceId']}{repeat}: {r['InvocationStatus']}{code}{error}",
                    bold=True)
        if r["Output"]:
            click.echo(r["Output"], nl=not r["Output"].endswith("\n"))
        if r["Dropped"]:
            click.echo(f"[{r['Dropped']} more bytes of output not shown; "
                       f"`porthole invocations output {reply['InvokeId']} "
                       f"--instance {r['InstanceId']}` has all that was kept]")
        if r["ErrorInfo"] and r["ErrorCode"] != "ExitCodeNonzero":
            click.echo(f"   {r['ErrorInfo']}")


def finish(c: Client, invoke_id: str, output: str | None, deadline_s: float) -> None:
    """Wait, print every result, exit 1 unless every instance succeeded."""
    mode = resolve(output)
    wait_for(c, invoke_id, mode, deadline_s)
    reply = all_results(c, invoke_id)
    print_results(reply, mode)
    if any(r["InvocationStatus"] != "Success" for r in reply["Results"]):
        sys.exit(1)


def print_started(invoke_id: str, output: str | None, **extra: Any) -> None:
    if resolve(output) == "json":
        emit_json({"InvokeId": invoke_id, **extra})
    else:
        click.echo(invoke_id)


# --- porthole invocations ------------------------------------------------------------------


@click.group()
def invocations() -> None:
    """Invocations of commands and file pushes: status, results, output, stop."""


@invocations.command("list")
@click.option("--scheduled", is_flag=True, help="Only active schedules, with their next run")
@click.option("--status", default=None, help="Only this status (e.g. Running, Failed)")
@click.option("--command-id", default=None, help="Only invocations of this command")
@click.option("--instance", default=None, help="Only invocations that target this instance")
@click.option("--page", default=1, show_default=True, type=click.IntRange(1))
@click.option("--page-size", default=20, show_default=True, type=click.IntRange(1, 100))
@output_option
def invocations_list(scheduled: bool, status: str | None, command_id: str | None,
                     instance: str | None, page: int, page_size: int,
                     output: str | None) -> None:
    """List invocations, newest first (DescribeInvocations)."""
    reply = client().call("DescribeInvocations", Scheduled=scheduled or None,
                          InvokeStatus=status, CommandId=command_id, InstanceId=instance,
                          PageNumber=page, PageSize=page_size)
    rows = reply["Invocations"]
    for r in rows:
        done, failed, running, pending = _summary(r["StatusCounts"])
        r["Progress"] = f"{done}/{failed}/{running}/{pending}"
        r["Name"] = r["CommandName"] or r["CommandType"]
    columns = ["InvokeId", "Name", "InvocationStatus", "RepeatMode", "Frequency",
               "NextRunTime", "InstanceCount", "Progress", "Username", "CreationTime"]
    if resolve(output) == "json":
        for r in rows:
            del r["Progress"], r["Name"]
        emit_json({"Invocations": rows, "TotalCount": reply["TotalCount"]})
    else:
        emit_rows("table", rows, columns, "Invocations")
        click.echo(f"{reply['TotalCount']} invocations; Progress is done/failed/running/"
                   "pending", err=True)


@invocations.command("show")
@click.argument("invoke_id")
@click.option("--history", is_flag=True, help="Every run of a schedule, not just the latest")
@click.option("--instance", default=None, help="Only this instance")
@output_option
def invocations_show(invoke_id: str, history: bool, instance: str | None,
                     output: str | None) -> None:
    """Status and output of an invocation on each instance (DescribeInvocationResults)."""
    c = client()
    mode = resolve(output)
    reply = all_results(c, invoke_id, history, instance)
    if mode == "json":
        emit_json(reply)
        return
    click.echo(f"{reply['InvokeId']}: {reply['InvocationStatus']} ({reply['RepeatMode']}, "
               f"as {reply['Username']})")
    if mode == "table":
        emit_rows("table", reply["Results"], ["InstanceId", "Repeats", "InvocationStatus",
                                              "ExitCode", "ErrorCode", "OutputSize",
                                              "StartTime", "FinishTime"], "Results")
    else:
        print_results(reply, mode)


@invocations.command("wait")
@click.argument("invoke_id")
@click.option("--max-wait", default=3600, show_default=True, type=click.IntRange(1),
              help="Seconds to wait at most")
@output_option
def invocations_wait(invoke_id: str, max_wait: int, output: str | None) -> None:
    """Wait until an invocation ends, print its results; exit 1 unless all succeeded."""
    finish(client(), invoke_id, output, max_wait)


@invocations.command("stop")
@click.argument("invoke_id")
@click.option("--instance", "instances", multiple=True, help="Only on this instance "
              "(repeatable; default: all)")
@output_option
def invocations_stop(invoke_id: str, instances: tuple[str, ...], output: str | None) -> None:
    """Stop an invocation: end its processes, cancel what waits and its schedule."""
    reply = client().call("StopInvocation", InvokeId=invoke_id,
                          InstanceIds=list(instances) or None)
    reply.pop("RequestId", None)
    if resolve(output) == "json":
        emit_json(reply)
    else:
        click.echo(f"stopping {invoke_id} ({reply['TasksStopped']} tasks)")


@invocations.command("output")
@click.argument("invoke_id")
@click.option("--instance", required=True, help="The instance")
@click.option("--repeat", default=0, type=click.IntRange(0), help="Which run (default latest)")
@click.option("--file", "path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of standard output")
def invocations_output(invoke_id: str, instance: str, repeat: int, path: str | None) -> None:
    """Download the full output kept for one instance (up to 16 MiB)."""
    c = client()
    out = open(path, "wb") if path else sys.stdout.buffer  # noqa: SIM115
    offset, reply = 0, None
    try:
        while True:
            reply = c.call("DescribeInvocationOutput", InvokeId=invoke_id, InstanceId=instance,
                           Repeats=repeat or None, Offset=offset)
            data = base64.b64decode(reply["Output"])
            out.write(data)
            offset += len(data)
            if not data or offset >= reply["OutputSize"]:
                break
    finally:
        if path:
            out.close()
        else:
            out.flush()
    if reply and reply["Dropped"]:
        click.echo(f"porthole: {reply['Dropped']} bytes beyond the 16 MiB kept were dropped",
                   err=True)
