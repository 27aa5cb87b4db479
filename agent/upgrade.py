"""Restart after the agent's package was upgraded on disk (pip install --upgrade)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from pathlib import Path

import agent

log = logging.getLogger("porthole.agent")

_VERSION_RE = re.compile(r'^__version__\s*=\s*["\']([^"\']+)["\']', re.M)


def installed_version() -> str | None:
    """The version of the agent package now on disk (not the one running)."""
    try:
        text = (Path(agent.__file__).parent / "__init__.py").read_text()
    except OSError:
        return None
    m = _VERSION_RE.search(text)
    return m.group(1) if m else None


async def watch_for_upgrade(interval: float) -> str:
    """Return the new version once the package on disk differs from the running one."""
    while True:
        await asyncio.sleep(interval)
        found = installed_version()
        if found and found != agent.__version__:
            return found


def restart() -> None:
    """Replace this process with the same command line (systemd keeps the same unit)."""
    if os.access(sys.argv[0], os.X_OK):  # the porthole-agent script of the install
        argv = list(sys.argv)
        executable = sys.argv[0]
    else:  # run as `python -m agent.main`; -P keeps the working directory off sys.path
        argv = [sys.executable, "-P", "-m", "agent.main", *sys.argv[1:]]
        executable = sys.executable
    log.info("restarting: %s", " ".join(argv))
    logging.shutdown()
    os.execv(executable, argv)
