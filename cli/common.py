"""Helpers shared by the CLI's command modules."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from cli.client import Client
from cli.config import load_profile
from cli.output import OUTPUT_CHOICES

output_option = click.option("--output", "-o", type=click.Choice(OUTPUT_CHOICES), default=None,
                             help="json (default when not a terminal), table or text")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"porthole: {message}", err=True)
    sys.exit(code)


def client() -> Client:
    """An API client for the profile chosen on the command line (--profile)."""
    return Client(load_profile(click.get_current_context().find_root().obj or "default"))
