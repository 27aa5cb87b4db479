"""``porthole-agent``: register with a server, then run as its outbound-connected agent."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

from agent import __version__
from agent.state import StateError, default_state_dir

if TYPE_CHECKING:
    from agent.connection import Agent
    from agent.passwords import PasswordStore

STATE_DIR_HELP = ("State directory (default $PORTHOLE_AGENT_STATE_DIR, else "
                  "/var/lib/porthole-agent; on Windows %ProgramData%\\Porthole\\agent).")


def _fail(message: str, code: int = 2) -> NoReturn:
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
        directory = state_dir or platform_state_dir()
        if sys.platform == "win32":  # below %ProgramData% every user could read the key
            import pywintypes

            from agent.windows.acl import secure_directory

            try:
                secure_directory(directory)
            except pywintypes.error as exc:
                _fail(f"cannot restrict access to {directory}: {exc.strerror}")
        instance_id = do_register(server, ca_file, activation_id, activation_code, region,
                                  directory)
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
    from agent.config import AgentConfigError

    try:
        agent = build_agent(state_dir or platform_state_dir())
    except (StateError, AgentConfigError, ValueError) as exc:
        _fail(str(exc))
    _setup_logging(log_format, log_level)
    try:
        code = asyncio.run(serve(agent))
    except KeyboardInterrupt:  # Windows: Ctrl-C in the console
        code = 0
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

    directory = state_dir or platform_state_dir()
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

    def ago(ts: object) -> str:
        return f"{time.time() - ts:.0f} s ago" if isinstance(ts, int | float) and ts else "never"

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


SERVICE_WINDOWS_ONLY = (
    "porthole-agent service is for Windows; on Linux the agent runs under systemd "
    "(deploy/install-agent.sh installs deploy/systemd/porthole-agent.service)")
PASSWORD_WINDOWS_ONLY = (
    "porthole-agent password is for Windows agents; on Linux the agent runs commands and "
    "sessions as other users without a password")


@cli.group()
def service() -> None:
    """The Windows service (runs `porthole-agent run` under the service control manager)."""


@service.command("install")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
def service_install(state_dir: Path | None) -> None:
    """Install the service (automatic start, restarted after a failure); it runs as
    LocalSystem with the given state directory."""
    _service_action("install", state_dir)


@service.command("remove")
def service_remove() -> None:
    """Stop the service if it runs, then remove it (the state directory stays)."""
    _service_action("remove", None)


@service.command("start")
def service_start() -> None:
    """Start the installed service."""
    _service_action("start", None)


@service.command("stop")
def service_stop() -> None:
    """Stop the service and wait until it has stopped."""
    _service_action("stop", None)


def _service_action(action: str, state_dir: Path | None) -> None:
    if sys.platform != "win32":
        _fail(SERVICE_WINDOWS_ONLY)
    else:
        from agent.windows.service import ServiceError, control

        try:
            click.echo(control(action, state_dir or platform_state_dir()))
        except ServiceError as exc:
            _fail(str(exc))


@cli.group()
def password() -> None:
    """Passwords of local users, for commands and sessions run as them on Windows.

    Cloud Assistant's WindowsPasswordName: the password stays on the instance, protected
    with DPAPI in STATE_DIR/passwords.json, and is looked up by the run-as user's name."""


@password.command("set")
@click.argument("name")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
def password_set(name: str, state_dir: Path | None) -> None:
    """Store the password of user NAME (read from standard input; asked twice on a
    terminal)."""
    store = _password_store(state_dir)
    if sys.stdin.isatty():
        secret = click.prompt(f"password of {name}", hide_input=True,
                              confirmation_prompt=True, err=True)
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    _password_call(lambda: store.set(name, secret))
    click.echo(f"stored the password of {name}")


@password.command("delete")
@click.argument("name")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
def password_delete(name: str, state_dir: Path | None) -> None:
    """Remove the password of user NAME."""
    store = _password_store(state_dir)
    if not _password_call(lambda: store.delete(name)):
        _fail(f"no password is stored for {name}", code=1)
    click.echo(f"removed the password of {name}")


@password.command("list")
@click.option("--state-dir", type=click.Path(path_type=Path), default=None, help=STATE_DIR_HELP)
@click.option("--output", type=click.Choice(["text", "json"]), default="text")
def password_list(state_dir: Path | None, output: str) -> None:
    """The users with a stored password (never the passwords)."""
    import time

    store = _password_store(state_dir)
    entries = _password_call(store.names)
    if output == "json":
        click.echo(json.dumps([{"Name": e.name, "UpdatedAt": e.updated_at} for e in entries]))
        return
    for e in entries:
        click.echo(f"{e.name}\t{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(e.updated_at))}")


def _password_store(state_dir: Path | None) -> PasswordStore:
    if sys.platform != "win32":
        _fail(PASSWORD_WINDOWS_ONLY)
    else:
        from agent.windows.dpapi import password_store

        return password_store(state_dir or platform_state_dir())


T = TypeVar("T")


def _password_call(call: Callable[[], T]) -> T:
    from agent.passwords import PasswordStoreError

    try:
        return call()
    except PasswordStoreError as exc:
        _fail(str(exc))


RESTART = -1


def platform_state_dir() -> Path:
    """The default state directory: /var/lib/porthole-agent, or on Windows
    %ProgramData%\\Porthole\\agent (both overridden by $PORTHOLE_AGENT_STATE_DIR)."""
    if sys.platform == "win32":
        import os

        from agent.windows.common import default_state_dir as windows_state_dir

        return Path(windows_state_dir(os.environ))
    return default_state_dir()


def build_agent(state_dir: Path) -> Agent:
    """The agent of a registered state directory, with its capabilities."""
    from agent.commands import CommandRunner
    from agent.config import AgentConfig
    from agent.connection import Agent
    from agent.state import AgentState

    state = AgentState.load(state_dir)
    agent = Agent(state, AgentConfig.load(state.directory))
    CommandRunner(agent)
    return agent


async def serve(agent: Agent,
                register_stop: Callable[[Callable[[], object]], None] | None = None) -> int:
    """Run the agent until it is stopped: by SIGTERM or SIGINT, or (a Windows service)
    through the stop function handed to ``register_stop``. Returns the exit code, or
    RESTART when the agent package was upgraded on disk."""
    from agent.upgrade import watch_for_upgrade

    log = logging.getLogger("porthole.agent")
    main = asyncio.create_task(agent.run_forever())
    if register_stop is not None:
        register_stop(main.cancel)
    elif sys.platform != "win32":
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
