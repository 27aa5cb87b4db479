"""The Windows agent cannot run here: it is type-checked for Windows (mypy --platform win32
against the pywin32 stubs and typings/winpty), and the Linux agent is shown to import none of
it."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import agent

ROOT = Path(__file__).resolve().parent.parent
PORTABLE = {"agent.windows", "agent.windows.common"}
"""The only modules of agent.windows that import on every platform."""


def agent_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(agent.__path__, "agent."))


def windows_only() -> list[str]:
    return [m for m in agent_modules() if m.startswith("agent.windows.") and m not in PORTABLE]


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_agent_type_checks_for(platform: str, tmp_path: Path) -> None:
    """Each platform's modules checked for that platform (the other platform's modules assert
    their platform first, so mypy skips them), with everything they share."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--platform", platform, "--cache-dir", str(tmp_path),
         "-p", "agent", "-p", "proto"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found" in result.stdout


def test_the_windows_modules_are_all_checked() -> None:
    """The Windows-only modules are in the package mypy walks (nothing hides elsewhere)."""
    assert set(windows_only()) == {
        "agent.windows.acl", "agent.windows.dpapi", "agent.windows.launch",
        "agent.windows.logon", "agent.windows.service", "agent.windows.tasks",
        "agent.windows.terminal"}


def test_linux_import_path_holds_nothing_of_windows() -> None:
    """Every other agent module imports on Linux (in a fresh interpreter) without loading
    pywin32, pywinpty or a Windows-only module; the seams pick the POSIX implementations."""
    portable = [m for m in agent_modules() if m not in windows_only()]
    script = f"""
import importlib, json, sys
for name in {portable!r}:
    importlib.import_module(name)
from agent import commands, shell
print(json.dumps({{
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in
                     ("win32api", "win32service", "win32security", "win32process", "win32job",
                      "win32crypt", "pywintypes", "servicemanager", "winpty", "msvcrt",
                      "_winapi")
                     or (m.startswith("agent.windows.") and m not in {sorted(PORTABLE)!r})),
    "shell": shell.ShellChannel.__module__,
    "host": commands.host.__name__,
}}))
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found == {"loaded": [], "shell": "agent.pty_shell", "host": "agent.posix_tasks"}


@pytest.mark.parametrize("module", windows_only())
def test_windows_modules_refuse_to_import_here(module: str) -> None:
    """A Windows-only module stops at its platform assertion, before any Windows import."""
    result = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{module} is for Windows" in result.stderr
