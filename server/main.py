"""``porthole-server``: init a data directory, run the server."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import click

from proto.ids import new_access_key
from server import __version__
from server.config import ConfigError, ServerConfig
from server.db import StorageError, driver_url, safe_url
from server.pki import create_ca, issue_server_cert
from server.secrets import SecretError, install_keyring, master_key_path

ADMIN_USER = "admin"
DATABASE_URL_HELP = ("SQLAlchemy URL of the database, e.g. postgresql://USER:PASS@HOST/DB "
                     "(default: database_url in server.yaml, else SQLite in the data dir).")


def _fail(message: str) -> None:
    click.echo(f"porthole-server: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="porthole-server")
def cli() -> None:
    """Porthole session server."""


@cli.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path),
              help="Directory for the database, CA and certificates.")
@click.option("--account-id", default="1000000000000000", show_default=True,
              help="Account id used in resource names (ARNs).")
@click.option("--region", "regions", multiple=True, help="Region served (repeatable).")
@click.option("--hostname", "hostnames", multiple=True,
              help="Extra DNS name or IP for the server certificate (repeatable).")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="HOST:PORT")
@click.option("--database-url", default="", envvar="PORTHOLE_DATABASE_URL",
              help="SQLAlchemy URL of an existing, empty database, e.g. "
                   "postgresql://USER:PASS@HOST/DB; written to server.yaml "
                   "(default: SQLite at DATA_DIR/porthole.db).")
def init(data_dir: Path, account_id: str, regions: tuple[str, ...],
         hostnames: tuple[str, ...], listen: str, database_url: str) -> None:
    """Create the database, CA, server certificate, master key and admin access key."""
    if (data_dir / "server.yaml").exists():
        _fail(f"{data_dir} is already initialised; use a new --data-dir or remove it first")
    config = ServerConfig(data_dir=data_dir, account_id=account_id,
                          regions=list(regions) or ["local"], hostnames=list(hostnames),
                          listen=listen, database_url=database_url)
    try:
        config.validate()
        _check_database_url(config)
    except (ConfigError, StorageError) as exc:
        _fail(str(exc))
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    create_ca(data_dir)
    issue_server_cert(data_dir, list(hostnames))
    key_id, secret = new_access_key()
    try:
        asyncio.run(_init_db(config, key_id, secret))
    except (StorageError, SecretError) as exc:
        _fail(str(exc))
    fd = os.open(data_dir / "admin.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"AccessKeyId": key_id, "AccessKeySecret": secret}, f, indent=2)
    config.save()
    click.echo(f"initialised {data_dir}: CA {data_dir / 'ca.pem'}, "
               f"admin key in {data_dir / 'admin.json'}, master key in "
               f"{master_key_path(data_dir)} (back it up apart from the database), "
               f"regions {', '.join(config.regions)}")


async def _init_db(config: ServerConfig, key_id: str, secret: str) -> None:
    from server.storage import Repository

    repo = await Repository.open(config.db_url)
    try:
        if await repo.user(ADMIN_USER) is not None:
            raise StorageError(
                f"the database {safe_url(config.db_url)} already holds a Porthole deployment; "
                "give init an empty database, or copy that deployment's data dir (with "
                "master.key) to run another replica of it")
        await install_keyring(config.data_dir, repo)
        await repo.ensure_regions(config.regions)
        await repo.create_user(ADMIN_USER, ["AdministratorAccess"])
        await repo.create_access_key(ADMIN_USER, key_id, secret)
        await repo.audit(principal="system", action="InitDataDir", outcome="Allowed",
                         resource=str(config.data_dir))
    finally:
        await repo.close()


def _check_database_url(config: ServerConfig) -> None:
    """Refuse (StorageError) a database URL of an engine or driver that is not supported."""
    driver_url(config.db_url)


def _load(data_dir: Path, database_url: str) -> ServerConfig:
    """server.yaml, with ``--database-url`` (or PORTHOLE_DATABASE_URL) over its key."""
    try:
        config = ServerConfig.load(data_dir)
        if database_url:
            config.database_url = database_url
        _check_database_url(config)
    except (ConfigError, StorageError) as exc:
        _fail(str(exc))
    return config


@cli.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--listen", default=None, help="HOST:PORT (overrides server.yaml)")
@click.option("--database-url", default="", envvar="PORTHOLE_DATABASE_URL",
              help=DATABASE_URL_HELP)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="INFO", show_default=True)
def run(data_dir: Path, listen: str | None, database_url: str, log_format: str,
        log_level: str) -> None:
    """Serve the agent gateway and the operator API over TLS."""
    config = _load(data_dir, database_url)
    try:
        if listen:
            config.listen = listen
            config.validate()
    except ConfigError as exc:
        _fail(str(exc))
    _setup_logging(log_format, log_level)
    from server.app import serve
    from server.bus import BusError

    try:
        asyncio.run(serve(config))
    except (StorageError, BusError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve on {config.listen}: {exc.strerror or exc}")
    except SecretError as exc:
        _fail(str(exc))


@cli.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--database-url", default="", envvar="PORTHOLE_DATABASE_URL",
              help=DATABASE_URL_HELP)
def migrate(data_dir: Path, database_url: str) -> None:
    """Bring the database schema to this version's newest revision (run also does this)."""
    config = _load(data_dir, database_url)
    _setup_logging("text", "INFO")

    async def upgrade() -> str:
        from server.storage import Repository

        repo = await Repository.open(config.db_url)
        await repo.close()
        return repo.schema_revision

    try:
        revision = asyncio.run(upgrade())
    except StorageError as exc:
        _fail(str(exc))
    click.echo(f"{safe_url(config.db_url)} is at schema revision {revision}")


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)  # server.migrations says what ran


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
