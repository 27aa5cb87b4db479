"""Rendering: JSON for machines (default when stdout is not a terminal), tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

OUTPUT_CHOICES = ["json", "table", "text"]


def resolve(output: str | None) -> str:
    if output:
        return output
    return "table" if sys.stdout.isatty() else "json"


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def emit_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for c in columns:
        table.add_column(c, no_wrap=True)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    # Off a terminal rich would wrap at 80 columns; a row per line is easier to read and grep.
    Console(width=None if sys.stdout.isatty() else 400).print(table)


def emit_rows(output: str, rows: list[dict[str, Any]], columns: Sequence[str],
              key: str) -> None:
    if output == "json":
        emit_json({key: rows})
    else:
        emit_table(rows, columns)
