"""The platform-neutral part of the Windows agent, tested on Linux: command lines and script
files for PowerShell and cmd, run-as names, exit codes, the password store's format (with a
real cipher standing in for DPAPI), and the Windows-only commands refusing here."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agent.config import AgentConfig, AgentConfigError
from agent.passwords import PASSWORD_FILE, PasswordStore, PasswordStoreError
from agent.process import task_variables
from agent.windows import common

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_ROOT = "C:\\Windows"

# --- command lines and script files ------------------------------------------------------------


def test_powershell_runs_the_script_file_without_profile_or_prompts() -> None:
    line = common.script_command_line("RunPowerShellScript",
                                      "C:\\ProgramData\\Porthole\\agent\\scripts\\t-1.ps1",
                                      SYSTEM_ROOT)
    assert line == (
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe -NoLogo -NoProfile "
        "-NonInteractive -ExecutionPolicy Bypass -File "
        "C:\\ProgramData\\Porthole\\agent\\scripts\\t-1.ps1")


def test_a_script_path_with_spaces_stays_one_argument() -> None:
    line = common.script_command_line("RunPowerShellScript", "D:\\Agent State\\t-1.ps1",
                                      "C:\\Win Dir")
    assert line.startswith('"C:\\Win Dir\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" ')
    assert line.endswith(' -File "D:\\Agent State\\t-1.ps1"')


def test_cmd_runs_the_batch_file_without_autorun_and_quoted_whole() -> None:
    line = common.script_command_line("RunBatScript", "D:\\A & B\\t-1.bat", SYSTEM_ROOT)
    # /s /c "...": cmd strips the outer quotes and keeps "D:\A & B\t-1.bat" as one word.
    assert line == '"C:\\Windows\\System32\\cmd.exe" /d /s /c ""D:\\A & B\\t-1.bat""'


def test_shell_scripts_do_not_run_on_windows() -> None:
    with pytest.raises(ValueError, match="RunShellScript does not run on Windows"):
        common.script_command_line("RunShellScript", "x", SYSTEM_ROOT)
    assert "RunShellScript" not in common.SCRIPT_SUFFIXES


def test_powershell_script_is_utf8_with_a_byte_order_mark() -> None:
    data = common.script_bytes("RunPowerShellScript", "Write-Output 'héllo'\n", "cp437")
    assert data == b"\xef\xbb\xbfWrite-Output 'h\xc3\xa9llo'\n"


def test_batch_script_has_crlf_and_the_oem_code_page() -> None:
    data = common.script_bytes("RunBatScript", "@echo off\necho é\r\necho 雪\n", "cp437")
    assert data == b"@echo off\r\necho \x82\r\necho ?\r\n"  # é in cp437; 雪 is not there


def test_terminal_runs_powershell_or_one_command_through_it() -> None:
    ps = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
    assert common.terminal_command(None, SYSTEM_ROOT) == [ps, "-NoLogo"]
    assert common.terminal_command("Get-Date; exit 3", SYSTEM_ROOT) == [
        ps, "-NoLogo", "-Command", "Get-Date; exit 3"]


def test_task_environment_keeps_only_the_servers_variables() -> None:
    env = {"PORTHOLE_PARAM_name": "$(reboot); `x`", "PATH": "C:\\evil",
           "PORTHOLE_BAD=NAME": "x", "PORTHOLE_NUL": "a\0b"}
    assert task_variables(env) == {"PORTHOLE_PARAM_name": "$(reboot); `x`"}


def test_environment_block_replaces_variables_whatever_their_case() -> None:
    base = {"Path": "C:\\Windows", "USERPROFILE": "C:\\Users\\alice"}
    merged = common.environment_block(base, {"PATH": "C:\\tools", "PORTHOLE_PARAM_x": "1"})
    assert merged == {"USERPROFILE": "C:\\Users\\alice", "PATH": "C:\\tools",
                      "PORTHOLE_PARAM_x": "1"}


# --- accounts, exit codes, paths -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["root", "System", "SYSTEM", "LocalSystem",
                                  "NT AUTHORITY\\SYSTEM"])
def test_the_default_user_and_system_mean_the_agents_own_account(name: str) -> None:
    assert common.is_system_account(name)


@pytest.mark.parametrize("name", ["Administrator", "alice", "systems", "rooted"])
def test_other_names_need_a_logon(name: str) -> None:
    assert not common.is_system_account(name)


def test_account_names_split_for_logon() -> None:
    assert common.split_account("alice") == ("alice", ".")
    assert common.split_account("CORP\\bob") == ("bob", "CORP")
    assert common.split_account("bob@corp.example") == ("bob@corp.example", None)


def test_exit_codes_read_as_signed_32_bit() -> None:
    assert common.signed_exit_code(0) == 0
    assert common.signed_exit_code(3) == 3
    assert common.signed_exit_code(0xC0000005) == -1073741819  # access violation
    assert common.signed_exit_code(-1073741819) == -1073741819
    assert common.signed_exit_code(0xFFFFFFFF) == -1


def test_default_state_dir_is_under_programdata() -> None:
    assert common.default_state_dir({}) == "C:\\ProgramData\\Porthole\\agent"
    assert common.default_state_dir({"PROGRAMDATA": "D:\\Data"}) == "D:\\Data\\Porthole\\agent"
    assert common.default_state_dir({"PORTHOLE_AGENT_STATE_DIR": "E:\\ph"}) == "E:\\ph"
    assert common.system_root({}) == "C:\\Windows"


def test_config_knows_its_state_dir_but_it_is_not_a_key(tmp_path: Path) -> None:
    assert AgentConfig.load(tmp_path).state_dir == tmp_path
    (tmp_path / "agent.yaml").write_text("allowed_users: [alice]\n")
    assert AgentConfig.load(tmp_path).state_dir == tmp_path
    (tmp_path / "agent.yaml").write_text("state_dir: /tmp\n")
    with pytest.raises(AgentConfigError, match="unknown key 'state_dir'"):
        AgentConfig.load(tmp_path)


# --- the password store ---------------------------------------------------------------------------


class Cipher:
    """AES-GCM with the entry name as associated data: like DPAPI with the name in its
    entropy, a blob only opens under its own name and key."""

    def __init__(self) -> None:
        self.key = AESGCM(AESGCM.generate_key(128))
        self.protected: list[str] = []

    def protect(self, data: bytes, name: str) -> bytes:
        self.protected.append(name)
        nonce = os.urandom(12)
        return nonce + self.key.encrypt(nonce, data, name.encode())

    def unprotect(self, blob: bytes, name: str) -> bytes:
        return self.key.decrypt(blob[:12], blob[12:], name.encode())


@pytest.fixture
def cipher() -> Cipher:
    return Cipher()


def store_at(path: Path, cipher: Cipher, secured: list[Path] | None = None) -> PasswordStore:
    return PasswordStore(path / PASSWORD_FILE, cipher.protect, cipher.unprotect,
                         secure=secured.append if secured is not None else None)


def test_store_sets_gets_lists_and_deletes(tmp_path: Path, cipher: Cipher) -> None:
    secured: list[Path] = []
    store = store_at(tmp_path, cipher, secured)
    assert store.get("alice") is None and store.names() == []
    store.set("Alice", "correct horse battery staple")
    store.set("svc.deploy@corp.example", "p@ss wörd")
    assert store.get("alice") == "correct horse battery staple"  # names ignore case
    assert store.get("ALICE") == "correct horse battery staple"
    assert store.get("svc.deploy@corp.example") == "p@ss wörd"
    assert [e.name for e in store.names()] == ["Alice", "svc.deploy@corp.example"]
    assert cipher.protected == ["alice", "svc.deploy@corp.example"]
    assert secured == [store.path, store.path]
    store.set("alice", "new one")
    assert store.get("Alice") == "new one" and len(store.names()) == 2
    assert store.delete("ALICE") is True
    assert store.delete("alice") is False
    assert store.get("alice") is None
    assert [e.name for e in store.names()] == ["svc.deploy@corp.example"]


def test_store_file_holds_no_password_and_only_its_owner_reads_it(
        tmp_path: Path, cipher: Cipher) -> None:
    store = store_at(tmp_path, cipher)
    store.set("alice", "correct horse battery staple")
    raw = store.path.read_bytes()
    assert b"correct horse" not in raw
    doc = json.loads(raw)
    assert doc["version"] == 1
    assert set(doc["entries"]) == {"alice"}
    assert set(doc["entries"]["alice"]) == {"name", "protected", "updated_at"}
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    # Another process sees the same entries (nothing is cached).
    assert store_at(tmp_path, cipher).get("alice") == "correct horse battery staple"


def test_a_blob_moved_to_another_name_does_not_open(tmp_path: Path, cipher: Cipher) -> None:
    store = store_at(tmp_path, cipher)
    store.set("alice", "alice's secret")
    store.set("bob", "bob's secret")
    doc = json.loads(store.path.read_text())
    doc["entries"]["bob"]["protected"] = doc["entries"]["alice"]["protected"]
    store.path.write_text(json.dumps(doc))
    with pytest.raises(PasswordStoreError, match="cannot be decrypted on this machine"):
        store.get("bob")
    assert store.get("alice") == "alice's secret"


def test_another_machines_store_does_not_open(tmp_path: Path, cipher: Cipher) -> None:
    store_at(tmp_path, cipher).set("alice", "secret")
    with pytest.raises(PasswordStoreError, match="password set alice"):
        store_at(tmp_path, Cipher()).get("alice")


@pytest.mark.parametrize("name", ["", "a b", "x/y", "-lead", "CORP\\bob", "é", "a" * 65])
def test_store_refuses_names_the_server_never_sends(tmp_path: Path, cipher: Cipher,
                                                    name: str) -> None:
    with pytest.raises(PasswordStoreError, match="is not a user name"):
        store_at(tmp_path, cipher).set(name, "secret")


@pytest.mark.parametrize("password", ["", "x" * 257, "nul\0inside"])
def test_store_refuses_impossible_passwords(tmp_path: Path, cipher: Cipher,
                                            password: str) -> None:
    with pytest.raises(PasswordStoreError, match="1 to 256 characters"):
        store_at(tmp_path, cipher).set("alice", password)
    assert not (tmp_path / PASSWORD_FILE).exists()


@pytest.mark.parametrize("content", [
    "not json", "[]", '{"version": 2, "entries": {}}', '{"version": 1}',
    '{"version": 1, "entries": {"alice": {"name": "bob", "protected": "AA=="}}}',
    '{"version": 1, "entries": {"alice": {"name": "alice"}}}',
])
def test_a_damaged_store_is_an_error_not_an_empty_store(tmp_path: Path, cipher: Cipher,
                                                        content: str) -> None:
    (tmp_path / PASSWORD_FILE).write_text(content)
    store = store_at(tmp_path, cipher)
    with pytest.raises(PasswordStoreError):
        store.get("alice")
    with pytest.raises(PasswordStoreError):
        store.set("carol", "secret")  # never overwrites what it cannot read
    assert (tmp_path / PASSWORD_FILE).read_text() == content


# --- the Windows-only commands on Linux ---------------------------------------------------


@pytest.mark.parametrize("args", [["service", "install"], ["service", "remove"],
                                  ["service", "start"], ["service", "stop"]])
def test_service_commands_say_they_are_for_windows(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.main", *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PORTHOLE_AGENT_STATE_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("porthole-agent: porthole-agent service is for Windows")
    assert "porthole-agent.service" in lines[0]


@pytest.mark.parametrize("args", [["password", "set", "alice"], ["password", "delete", "alice"],
                                  ["password", "list"]])
def test_password_commands_say_they_are_for_windows(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "agent.main", *args], cwd=ROOT,
                            input="secret\n", capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PORTHOLE_AGENT_STATE_DIR": str(tmp_path)})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "is for Windows agents" in lines[0]
    assert not (tmp_path / PASSWORD_FILE).exists()
