"""The agent's status file (``STATE_DIR/status.json``), read by `porthole-agent status`."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def write_status(state_dir: Path, **values: Any) -> None:
    """Replace the status file atomically (readers never see half of it)."""
    path = state_dir / STATUS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "updated_at": time.time(), **values}))
    os.replace(tmp, path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    if sys.platform == "win32":  # os.kill(pid, 0) would end the process there
        from agent.windows.tasks import pid_alive

        return pid_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
