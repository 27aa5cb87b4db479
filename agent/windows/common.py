"""Windows logic that needs no Windows API: paths, command lines, script files, exit codes.
Imported (and tested) on every platform."""

from __future__ import annotations

import ntpath
import re
import subprocess
from collections.abc import Mapping

SERVICE_NAME = "PortholeAgent"
SERVICE_DISPLAY_NAME = "Porthole Agent"
STATE_DIR_ENV = "PORTHOLE_AGENT_STATE_DIR"
SYSTEM_ACCOUNTS = frozenset({"root", "system", "localsystem", "nt authority\\system"})
"""Run-as names meaning the agent's own account (LocalSystem under the service): ``root`` is
the API's default user, so an invocation without Username runs as LocalSystem, as Cloud
Assistant does on Windows."""
SCRIPT_SUFFIXES = {"RunPowerShellScript": ".ps1", "RunBatScript": ".bat"}
KILLED_EXIT_CODE = 1
"""The exit code a process tree ended by the agent reports (``taskkill /f`` gives the same)."""


def default_state_dir(environ: Mapping[str, str]) -> str:
    """``$PORTHOLE_AGENT_STATE_DIR`` or ``%ProgramData%\\Porthole\\agent``."""
    if environ.get(STATE_DIR_ENV):
        return environ[STATE_DIR_ENV]
    return ntpath.join(environ.get("PROGRAMDATA") or "C:\\ProgramData", "Porthole", "agent")


def system_root(environ: Mapping[str, str]) -> str:
    """``%SystemRoot%`` (``os.environ`` ignores the case of names on Windows)."""
    return environ.get("SYSTEMROOT") or "C:\\Windows"


def is_system_account(name: str) -> bool:
    return name.casefold() in SYSTEM_ACCOUNTS


def split_account(name: str) -> tuple[str, str | None]:
    """(user, domain) for LogonUser: ``DOMAIN\\user``, ``user@domain.example`` (a UPN, domain
    None) or a local ``user`` (domain ``.``)."""
    if "\\" in name:
        domain, user = name.split("\\", 1)
        return user, domain
    if "@" in name:
        return name, None
    return name, "."


def powershell(system_root: str) -> str:
    """Windows PowerShell by full path (a writable directory early in PATH cannot stand in)."""
    return ntpath.join(system_root, "System32", "WindowsPowerShell", "v1.0", "powershell.exe")


def script_command_line(command_type: str, script_path: str, system_root: str) -> str:
    """The command line that runs a script file of ``command_type``."""
    if command_type == "RunPowerShellScript":
        return subprocess.list2cmdline([
            powershell(system_root), "-NoLogo", "-NoProfile", "-NonInteractive",
            "-ExecutionPolicy", "Bypass", "-File", script_path])
    if command_type == "RunBatScript":
        # /d: no AutoRun commands; /s /c "..." takes everything between the outer quotes
        # as is, so a path with spaces or '&' stays one word.
        cmd = ntpath.join(system_root, "System32", "cmd.exe")
        return f'"{cmd}" /d /s /c ""{script_path}""'
    raise ValueError(f"{command_type} does not run on Windows")


def script_bytes(command_type: str, script: str, oem_encoding: str) -> bytes:
    """A script file's content: PowerShell reads UTF-8 with a byte order mark (without one,
    Windows PowerShell assumes the ANSI code page); cmd reads batch files in the OEM code page
    and wants CRLF line ends (labels and ``goto`` misbehave without them)."""
    if command_type == "RunPowerShellScript":
        return script.encode("utf-8-sig")
    if command_type == "RunBatScript":
        return re.sub(r"\r?\n", "\r\n", script).encode(oem_encoding, errors="replace")
    raise ValueError(f"{command_type} does not run on Windows")


def terminal_command(command: str | None, system_root: str) -> list[str]:
    """What a terminal session runs: PowerShell, or one command through it."""
    argv = [powershell(system_root), "-NoLogo"]
    return argv + ["-Command", command] if command else argv


def signed_exit_code(code: int) -> int:
    """Windows exit codes are 32-bit unsigned; NTSTATUS values (0xC0000005) read better, and
    fit a signed database column, as the negative numbers .NET shows."""
    code &= 0xFFFFFFFF
    return code - (1 << 32) if code >= 1 << 31 else code


def environment_block(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """``base`` with ``extra`` on top; Windows variable names ignore case, so a variable of
    ``extra`` replaces one of ``base`` whatever its case."""
    merged = {k: v for k, v in base.items() if k.upper() not in {e.upper() for e in extra}}
    merged.update(extra)
    return merged
