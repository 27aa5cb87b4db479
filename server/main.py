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
from server.pki import create_ca, issue_server_cert
from server.secrets import SecretError, install_keyring, master_key_path

ADMIN_USER = "admin"


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
def init(data_dir: Path, account_id: str, regions: tuple[str, ...],
         hostnames: tuple[str, ...], listen: str) -> None:
    """Create the database, CA, server certificate, master key and admin access key."""
    if (data_dir / "server.yaml").exists():
        _fail(f"{data_dir} is already initialised; use a new --data-dir or remove it first")
    config = ServerConfig(data_dir=data_dir, account_id=account_id,
                          regions=list(regions) or ["local"], hostnames=list(hostnames),
                          listen=listen)
    try:
        config.validate()
    except ConfigError as exc:
        _fail(str(exc))
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    create_ca(data_dir)
    issue_server_cert(data_dir, list(hostnames))
    key_id, secret = new_access_key()
    asyncio.run(_init_db(config, key_id, secret))
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
        await install_keyring(config.data_dir, repo)
        await repo.ensure_regions(config.regions)
        await repo.create_user(ADMIN_USER, ["AdministratorAccess"])
        await repo.create_access_key(ADMIN_USER, key_id, secret)
        await repo.audit(principal="system", action="InitDataDir", outcome="Allowed",
                         resource=str(config.data_dir))
    finally:
        await repo.close()


@cli.command()
@click.option("--data-dir", required=True, type=click.Path(path_type=Path))
@click.option("--listen", default=None, help="HOST:PORT (overrides server.yaml)")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="INFO", show_default=True)
def run(data_dir: Path, listen: str | None, log_format: str, log_level: str) -> None:
    """Serve the agent gateway and the operator API over TLS."""
    try:
        config = ServerConfig.load(data_dir)
        if listen:
            config.listen = listen
            config.validate()
    except ConfigError as exc:
        _fail(str(exc))
    _setup_logging(log_format, log_level)
    from server.app import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        _fail(f"cannot serve on {config.listen}: {exc.strerror or exc}")
    except SecretError as exc:
        _fail(str(exc))


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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
