"""The agent as a Windows service: installed by ``porthole-agent service install``, started by
the service control manager as ``python.exe -m agent.windows.service --state-dir DIR`` under
LocalSystem. It runs the same asyncio agent as ``porthole-agent run`` and stops it when the
manager asks.

Logs go to ``STATE_DIR\\agent.log`` (rotated) and fatal errors also to the Application event
log. After an upgrade of the agent package the process exits abnormally so that the
service's failure actions start the new code (systemd's ``Restart=`` on Linux).
"""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.service is for Windows"

import argparse
import asyncio
import logging
import logging.handlers
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pywintypes
import servicemanager
import win32service
import win32serviceutil

from agent.state import RECORD_FILE
from agent.windows.acl import secure_directory
from agent.windows.common import SERVICE_DISPLAY_NAME, SERVICE_NAME

DESCRIPTION = ("Porthole agent: dials out to porthole-server for sessions, port forwarding "
               "and commands; opens no inbound port.")
LOG_FILE = "agent.log"
RESTART_EXIT = 75
"""Exit status after an upgrade: an abnormal end, so the failure actions restart us."""
FAILURE_ACTIONS = {
    "ResetPeriod": 24 * 3600,  # seconds without failure after which the count starts over
    "RebootMsg": "",
    "Command": "",
    "Actions": [(win32service.SC_ACTION_RESTART, 5000)] * 3,
}
STOP_WAIT = 30


class ServiceError(Exception):
    """A service operation failed; str() says what and why."""


class AgentService(win32serviceutil.ServiceFramework):
    _svc_name_ = SERVICE_NAME
    _svc_display_name_ = SERVICE_DISPLAY_NAME
    _svc_description_ = DESCRIPTION
    state_dir = Path(".")
    """Set by main() before the dispatcher starts the service."""

    def __init__(self, args: Sequence[str]) -> None:
        super().__init__(args)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: Callable[[], object] | None = None
        self._stopping = threading.Event()

    def SvcStop(self) -> None:  # noqa: N802 (pywin32's name)
        self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop)

    def SvcDoRun(self) -> None:  # noqa: N802 (pywin32's name)
        from agent.main import RESTART

        code = self._serve()
        log = logging.getLogger("porthole.agent")
        if code == RESTART:
            log.info("restarting through the service's failure actions")
            logging.shutdown()
            os._exit(RESTART_EXIT)
        if code != 0:
            servicemanager.LogErrorMsg(
                f"{SERVICE_NAME} stopped with exit code {code}; see "
                f"{self.state_dir / LOG_FILE}")

    def _serve(self) -> int:
        from agent.config import AgentConfigError
        from agent.main import build_agent, serve
        from agent.state import StateError

        try:
            agent = build_agent(self.state_dir)
        except (StateError, AgentConfigError, ValueError) as exc:
            servicemanager.LogErrorMsg(f"{SERVICE_NAME}: {exc}")
            return 2
        loop = asyncio.ProactorEventLoop()
        self._loop = loop

        def register(stop: Callable[[], object]) -> None:
            self._stop = stop
            if self._stopping.is_set():  # asked to stop before the agent started
                stop()

        try:
            return loop.run_until_complete(serve(agent, register))
        finally:
            loop.close()


def _setup_logging(state_dir: Path) -> None:
    handler = logging.handlers.RotatingFileHandler(
        state_dir / LOG_FILE, maxBytes=10 * 1024 * 1024, backupCount=3, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("websockets").setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    """The entry the service control manager starts."""
    parser = argparse.ArgumentParser(prog="python -m agent.windows.service")
    parser.add_argument("--state-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    AgentService.state_dir = args.state_dir
    _setup_logging(args.state_dir)
    servicemanager.Initialize()
    servicemanager.PrepareToHostSingle(AgentService)
    servicemanager.StartServiceCtrlDispatcher()
    return 0


# --- install, remove, start, stop --------------------------------------------------------------


def command_line(state_dir: Path) -> str:
    """What the service control manager runs."""
    return f'"{sys.executable}" -m agent.windows.service --state-dir "{state_dir}"'


def control(action: str, state_dir: Path) -> str:
    """``porthole-agent service ACTION``; returns what was done, raises ServiceError."""
    try:
        if action == "install":
            return _install(state_dir)
        if action == "remove":
            return _remove()
        if action == "start":
            win32serviceutil.StartService(SERVICE_NAME)
            win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_RUNNING,
                                                  STOP_WAIT)
            return f"started {SERVICE_NAME}"
        if action == "stop":
            _stop_and_wait()
            return f"stopped {SERVICE_NAME}"
    except pywintypes.error as exc:
        hint = " (run it from an elevated prompt)" if exc.winerror == 5 else ""
        raise ServiceError(f"cannot {action} the {SERVICE_NAME} service: "
                           f"{exc.strerror}{hint}") from None
    raise ServiceError(f"unknown service action {action!r}")


def _install(state_dir: Path) -> str:
    if sys.prefix != sys.base_prefix:
        raise ServiceError(
            f"{sys.executable} belongs to a virtual environment, whose python.exe starts the "
            "real interpreter as a child the service control manager cannot talk to; install "
            "porthole into a Python installed for all users and run this from there")
    if not (state_dir / RECORD_FILE).exists():
        raise ServiceError(f"{state_dir} holds no registration; run "
                           "`porthole-agent register` first")
    secure_directory(state_dir)
    manager = win32service.OpenSCManager(None, None, win32service.SC_MANAGER_ALL_ACCESS)
    try:
        try:
            handle = win32service.CreateService(
                manager, SERVICE_NAME, SERVICE_DISPLAY_NAME, win32service.SERVICE_ALL_ACCESS,
                win32service.SERVICE_WIN32_OWN_PROCESS, win32service.SERVICE_AUTO_START,
                win32service.SERVICE_ERROR_NORMAL, command_line(state_dir), None, False, None,
                None, None)
        except pywintypes.error as exc:
            if exc.winerror == 1073:  # ERROR_SERVICE_EXISTS
                raise ServiceError(f"{SERVICE_NAME} is already installed; `porthole-agent "
                                   "service remove` it first") from None
            raise
        try:
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_DESCRIPTION, DESCRIPTION)
            win32service.ChangeServiceConfig2(
                handle, win32service.SERVICE_CONFIG_FAILURE_ACTIONS, FAILURE_ACTIONS)
        finally:
            win32service.CloseServiceHandle(handle)
    finally:
        win32service.CloseServiceHandle(manager)
    return (f"installed {SERVICE_NAME} (automatic start, LocalSystem, state in {state_dir}); "
            "start it with `porthole-agent service start`")


def _stop_and_wait() -> None:
    status = win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1]
    if status != win32service.SERVICE_STOPPED:
        win32serviceutil.StopService(SERVICE_NAME)
        win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_STOPPED,
                                              STOP_WAIT)


def _remove() -> str:
    _stop_and_wait()
    win32serviceutil.RemoveService(SERVICE_NAME)
    return f"removed {SERVICE_NAME}"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
