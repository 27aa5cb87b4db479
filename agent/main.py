"""``porthole-agent``: register with a server, then run as its outbound-connected agent."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

import click

from agent import __version__
from agent.state import StateError, default_state_dir

STATE_DIR_HELP = "State directory (default $PORTHOLE_AGENT_STATE_DIR or /var/lib/porthole-agent)."


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"porthole-agent: {message}", err=True)
    sys.exit(code)


@click.group()
@click.version_option(__version__, prog_name="porthole-agent")
def cli() -> None:
    """Porthole agent: dials out to porthole-server; no inbound port is opened."""


@cli.command()
@click.option("--server", required=True,
              help="Server URL, e.g. https://porthole.example:443; for several replicas, "
                   "comma-separated URLs, tried in turn")
@click.option("--ca-file", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="CA certificate of the server (pinned)")
@click.option("--activation-id", required=True)
@click.option("--activation-code", required=True)
@click.option("--region", required=True)
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def register(server: str, ca_file: Path, activation_id: str, activation_code: str, region: str,
             state_dir: Path | None, output: str) -> None:
    """Register this machine and store its identity key."""
    from agent.register import RegistrationError
    from agent.register import register as do_register

    try:
        instance_id = do_register(server, ca_file, activation_id, activation_code, region,
                                  state_dir or default_state_dir())
    except (RegistrationError, StateError) as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot write the agent state: {exc}")
    if output == "json":
        click.echo(json.dumps({"InstanceId": instance_id}))
    else:
        click.echo(instance_id)


@cli.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text")
@click.option("--log-level", default="INFO", show_default=True)
def run(state_dir: Path | None, log_format: str, log_level: str) -> None:
    """Connect to the server and serve until stopped (reconnects forever)."""
    from agent.commands import CommandRunner
    from agent.config import AgentConfig, AgentConfigError
    from agent.connection import Agent
    from agent.state import AgentState

    try:
        state = AgentState.load(state_dir or default_state_dir())
        agent = Agent(state, AgentConfig.load(state.directory))
        CommandRunner(agent)
    except (StateError, AgentConfigError, ValueError) as exc:
        _fail(str(exc))
    _setup_logging(log_format, log_level)
    code = asyncio.run(_run(agent))
    if code == RESTART:
        from agent.upgrade import restart

        restart()
    sys.exit(code)


@cli.command()
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def status(state_dir: Path | None, output: str) -> None:
    """Show the local agent's state: server, connection, last heartbeat, spooled results."""
    import time

    from agent.state import AgentState
    from agent.status import process_alive, read_status

    directory = state_dir or default_state_dir()
    try:
        state = AgentState.load(directory)
    except StateError as exc:
        _fail(str(exc))
    current = read_status(directory) or {}
    running = bool(current.get("pid")) and process_alive(int(current["pid"]))
    spool = directory / "spool"
    info = {
        "InstanceId": state.instance_id,
        "Server": state.server,
        "Region": state.region,
        "Running": running,
        "Connected": running and bool(current.get("connected")),
        "ConnectedSince": current.get("connected_since") if running else None,
        "LastHeartbeat": current.get("last_heartbeat"),
        "OpenChannels": current.get("channels", 0) if running else 0,
        "SpooledResults": len(list(spool.glob("*.result"))) if spool.is_dir() else 0,
        "Pid": current.get("pid") if running else None,
    }
    if output == "json":
        click.echo(json.dumps(info))
        return

    def ago(ts: float | None) -> str:
        return "never" if not ts else f"{time.time() - ts:.0f} s ago"

    click.echo(f"instance        {info['InstanceId']} ({info['Region']})")
    click.echo(f"server          {info['Server']}")
    process = f"running, pid {info['Pid']}" if running else "not running"
    link = f"connected since {ago(info['ConnectedSince'])}" if info["Connected"] else \
        "not connected"
    click.echo(f"agent process   {process}")
    click.echo(f"connection      {link}")
    click.echo(f"last heartbeat  {ago(info['LastHeartbeat'])}")
    click.echo(f"open channels   {info['OpenChannels']}")
    click.echo(f"spooled results {info['SpooledResults']} (not yet acknowledged by the server)")
    if not running:
        sys.exit(3)


RESTART = -1


async def _run(agent: object) -> int:
    from agent.connection import Agent
    from agent.upgrade import watch_for_upgrade

    assert isinstance(agent, Agent)
    log = logging.getLogger("porthole.agent")
    main = asyncio.create_task(agent.run_forever())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, main.cancel)
    tasks: set[asyncio.Task[object]] = {main}  # type: ignore[arg-type]
    if agent.config.upgrade_check_interval > 0:
        tasks.add(asyncio.create_task(watch_for_upgrade(agent.config.upgrade_check_interval)))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if main not in done:
        (watcher,) = done
        log.info("the agent package was upgraded to %s; restarting", watcher.result())
        main.cancel()
        return RESTART
    for task in tasks - done:
        task.cancel()
    try:
        return main.result()
    except asyncio.CancelledError:
        log.info("stopped")
        return 0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": self.formatTime(record), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


def _setup_logging(fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.getLogger("websockets").setLevel(logging.WARNING)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
