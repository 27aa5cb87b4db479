"""Terminal channels on Windows: PowerShell (or one command) on a ConPTY (pywinpty).

The same contract as the Linux PTY channel. Output is read from the pseudo console in a
thread only while the peer has granted credit (what one read returns beyond the credit is
held until credit comes). Input is written in order, and acknowledged once written. Resize
is ResizePseudoConsole. The session's processes are in a Job Object: ending the channel, or
the agent, ends all of them.

pywinpty starts processes as the agent's own account only. For any other user the pseudo
console runs ``agent.windows.launch`` (as LocalSystem), which logs the user on and starts the
shell with that token; the shell inherits the pseudo console.
"""

from __future__ import annotations

import sys

assert sys.platform == "win32", "agent.windows.terminal is for Windows"

import asyncio
import codecs
import contextlib
import logging
import os
import subprocess
import threading
from collections.abc import Callable
from typing import Any

import pywintypes
import win32api
import win32con
import win32job
import winpty

from agent.channel import AgentChannel, ChannelRefused
from agent.config import AgentConfig
from agent.process import TaskError
from agent.windows import common
from agent.windows.dpapi import password_store
from agent.windows.logon import ensure_session_user, open_account
from agent.windows.tasks import new_job, state_dir, wait_exit
from proto.messages import MAX_CHUNK, ChannelAccept, ChannelOpen, Message

log = logging.getLogger("porthole.agent.shell")

WINDOW = 64 * 1024
MAX_SIZE = 10000
PROCESS_ACCESS = (win32con.SYNCHRONIZE | win32con.PROCESS_QUERY_LIMITED_INFORMATION
                  | win32con.PROCESS_SET_QUOTA | win32con.PROCESS_TERMINATE)


def _size(value: object, default: int) -> int:
    try:
        return max(1, min(int(value), MAX_SIZE))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return default


def environment_string(environment: dict[str, str]) -> str:
    """The NUL-separated block pywinpty passes to CreateProcess, sorted as Windows wants."""
    items = sorted(environment.items(), key=lambda kv: kv[0].upper())
    return "\0".join(f"{k}={v}" for k, v in items) + "\0"


class ConPtyChannel(AgentChannel):
    receive_window = WINDOW

    def __init__(self, open_msg: ChannelOpen, config: AgentConfig,
                 send: Callable[[Message], None], on_done: Callable[[int], None]) -> None:
        super().__init__(open_msg, config, send, on_done)
        self.pty: winpty.PTY | None = None
        self.process: Any = None
        self.job: Any = None
        self._exit: int | None = None
        self._may_read = threading.Event()
        self._closing = False
        self._held = bytearray()
        self._eof = False
        self._finished = asyncio.Event()
        self._input = bytearray()
        self._writer: asyncio.Task[None] | None = None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    async def start(self) -> None:
        user = str(self.params.get("user") or self.config.session_user)
        if not self.config.allows(user):
            raise ChannelRefused("RunAsNotAllowed",
                                 f"this agent's allowed_users does not include {user!r}")
        store = password_store(state_dir(self.config))
        try:
            if user == self.config.session_user:
                await asyncio.to_thread(ensure_session_user, user,
                                        self.config.session_user_sudo, store)
            # Logs on now, so a wrong password refuses the channel with a clear reason.
            account = await asyncio.to_thread(open_account, user, store)
        except TaskError as exc:
            raise ChannelRefused(exc.code, str(exc)) from None
        command = self.params.get("command")
        system_root = common.system_root(os.environ)
        shell = common.terminal_command(str(command) if command else None, system_root)
        if account.token is None:
            argv, environment, cwd = shell, account.environment, account.home
        else:
            argv = [sys.executable, "-I", "-m", "agent.windows.launch", str(store.path), user,
                    *shell]
            environment, cwd = dict(os.environ), os.path.join(system_root, "System32")
        account.close()
        cols, rows = _size(self.params.get("cols"), 80), _size(self.params.get("rows"), 24)
        try:
            pty = winpty.PTY(cols, rows, backend=winpty.Backend.ConPTY)
            pty.spawn(subprocess.list2cmdline(argv[:1]), subprocess.list2cmdline(argv[1:]) or None,
                      cwd, environment_string(environment))
        except winpty.WinptyError as exc:
            raise ChannelRefused("ProcessCreateFailed", f"cannot start {argv[0]}: {exc}") \
                from None
        self.pty = pty
        try:
            self.job = new_job()
            self.process = win32api.OpenProcess(PROCESS_ACCESS, False, pty.pid or 0)
            win32job.AssignProcessToJobObject(self.job, self.process)
        except pywintypes.error as exc:
            self._exit = common.KILLED_EXIT_CODE  # nothing waits on the process handle
            self._close_pty()
            raise ChannelRefused("ProcessCreateFailed",
                                 f"cannot put the session in a job: {exc.strerror}") from None
        log.info("channel %d: ConPTY session for %s started (pid %s)", self.id, user, pty.pid)
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._read_loop, args=(pty, loop), daemon=True,
                         name=f"conpty-{self.id}").start()
        self.send(ChannelAccept(self.id, WINDOW))
        self.credit_changed()
        asyncio.create_task(self._wait())

    # --- output: ConPTY -> peer -----------------------------------------------------------

    def _read_loop(self, pty: winpty.PTY, loop: asyncio.AbstractEventLoop) -> None:
        """Runs in a thread: one read whenever the loop allows it (credit, nothing held)."""
        while True:
            self._may_read.wait()
            if self._closing:
                return
            try:
                text = pty.read(blocking=False)  # waits a moment in pywinpty when idle
            except winpty.WinptyError:  # "reached EOF": the process ended, all was read
                loop.call_soon_threadsafe(self._on_eof)
                return
            if text:
                self._may_read.clear()  # _on_output decides whether to read on
                loop.call_soon_threadsafe(self._on_output, text.encode("utf-8", "replace"))

    def _on_output(self, data: bytes) -> None:
        self._held += data
        self._flush()

    def _on_eof(self) -> None:
        self._eof = True
        self._flush()

    def _flush(self) -> None:
        while self._held and (room := min(self.endpoint.sender.available(), MAX_CHUNK)) > 0:
            chunk = bytes(self._held[:room])
            del self._held[:room]
            self.send(self.endpoint.sender.send(chunk))
        if self._eof:
            self._may_read.clear()
            if not self._held:
                self._finished.set()
        elif not self._held and self.endpoint.sender.available() > 0:
            self._may_read.set()
        else:
            self._may_read.clear()

    def credit_changed(self) -> None:
        if self.pty is not None:
            self._flush()

    # --- input: peer -> ConPTY ------------------------------------------------------------

    def on_data(self, data: bytes) -> None:
        if self.pty is None:
            return
        self._input += data
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_input())

    async def _write_input(self) -> None:
        while self._input and self.pty is not None:
            chunk = bytes(self._input)
            self._input.clear()
            text = self._decoder.decode(chunk)
            if text:
                try:
                    await asyncio.to_thread(self.pty.write, text)
                except winpty.WinptyError:
                    self._input.clear()
            self.consumed(len(chunk))

    def on_resize(self, cols: int, rows: int) -> None:
        if self.pty is not None:
            with contextlib.suppress(winpty.WinptyError):
                self.pty.set_size(_size(cols, 80), _size(rows, 24))

    # --- lifetime -------------------------------------------------------------------------

    async def _wait(self) -> None:
        code = await asyncio.to_thread(wait_exit, self.process)
        self._exit = code
        # Read out what the console still holds (a leftover process writing on is ended).
        await self.drain_output(self._finished, self._kill_tree)
        self._close_pty()
        log.info("channel %d: session exited with %d", self.id, code)
        self.finish("exited", code)

    async def terminate(self) -> None:
        """End the session: every process in its job."""
        if self.process is None or self._exit is not None:
            self.forget()
            return
        self._kill_tree()
        self._finished.set()  # do not wait for output nobody will read

    def _kill_tree(self) -> None:
        if self.job is not None:
            with contextlib.suppress(pywintypes.error):
                win32job.TerminateJobObject(self.job, common.KILLED_EXIT_CODE)

    def _close_pty(self) -> None:
        """End what is left of the session and let go of the pseudo console."""
        self._closing = True
        self._may_read.set()  # the reader thread sees _closing and returns
        self._kill_tree()
        if self.job is not None:
            win32api.CloseHandle(self.job)
            self.job = None
        if self.process is not None and self._exit is not None:
            win32api.CloseHandle(self.process)
            self.process = None
        self.pty = None  # pywinpty closes the pseudo console when the object goes

    def release(self) -> None:
        self._close_pty()
