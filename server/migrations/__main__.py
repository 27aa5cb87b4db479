"""Developer tool: ``python -m server.migrations revision -m "what changes"`` writes the next
revision into ``versions/`` from the difference between the tables in the stores and the
existing migrations (applied to a scratch SQLite database). Read and adjust what it writes:
Alembic does not see every change (renames, for one), and PostgreSQL-only type changes need
the dialect check that ``0002`` shows."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory

from server.migrations import alembic_config


@click.group()
def cli() -> None:
    """Porthole schema migrations."""


@cli.command()
@click.option("-m", "--message", required=True, help="What the revision changes.")
def revision(message: str) -> None:
    """Write the next revision, numbered after the current head."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head() or "0000"
    rev_id = f"{int(head) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        engine = sa.create_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "head")
            script = command.revision(alembic_config(conn), message=message, autogenerate=True,
                                      rev_id=rev_id)
        engine.dispose()
    if script is None or isinstance(script, list):
        sys.exit("no revision written")
    click.echo(f"wrote {script.path}")


if __name__ == "__main__":
    cli()
