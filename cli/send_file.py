"""`porthole send-file`: SendFile, then wait for every instance's result."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from cli.common import client, fail, output_option
from cli.invocations import finish, print_started

MAX_CONTENT = 32 * 1024


@click.command("send-file")
@click.argument("instance_ids", nargs=-1, required=True)
@click.option("--file", "path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Local file to push (up to 32 KiB)")
@click.option("--target-dir", required=True, help="Absolute directory on the instances")
@click.option("--name", default=None, help="File name there (default: the local name)")
@click.option("--owner", default="root", show_default=True)
@click.option("--group", default=None, help="Group (default: the owner's primary group)")
@click.option("--mode", default="0644", show_default=True, help="Octal file mode")
@click.option("--overwrite", is_flag=True, help="Replace an existing file")
@click.option("--delivery-timeout", default=None, type=click.IntRange(0, 7 * 86400),
              help="Seconds an offline instance may take to come back (default 600)")
@click.option("--no-wait", is_flag=True, help="Print the InvokeId and return at once")
@output_option
def send_file(instance_ids: tuple[str, ...], path: Path, target_dir: str, name: str | None,
              owner: str, group: str | None, mode: str, overwrite: bool,
              delivery_timeout: int | None, no_wait: bool, output: str | None) -> None:
    """Write a file on instances with its owner, group and mode (SendFile)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")
    if len(data) > MAX_CONTENT:
        fail(f"{path} is {len(data)} bytes; SendFile takes up to 32 KiB")
    c = client()
    invoke_id = c.call("SendFile", InstanceIds=list(instance_ids), Name=name or path.name,
                       TargetDir=target_dir, Content=base64.b64encode(data).decode(),
                       ContentType="Base64", FileOwner=owner, FileGroup=group, FileMode=mode,
                       Overwrite=overwrite or None,
                       DeliveryTimeout=delivery_timeout)["InvokeId"]
    if no_wait:
        print_started(invoke_id, output)
        return
    finish(c, invoke_id, output, 60 + (delivery_timeout or 600) + 60)
