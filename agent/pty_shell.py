"""Terminal channels on Linux: a login shell (or one command) of a local user on a PTY.

PTY output is read only while the peer has granted credit, so a flood stops in the kernel's
PTY buffer instead of in memory. Input is written as the PTY accepts it and acknowledged
only then.
"""

from __future__ import annotations

import sys

assert sys.platform != "win32", "agent.pty_shell is for POSIX systems"

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Callable

from agent.channel import AgentChannel, ChannelRefused
from agent.config import AgentConfig
from agent.posix_tasks import recycled, session_processes, start_time
from agent.users import RunAsError, ensure_session_user, run_as
from proto.messages import (
    MAX_CHUNK,
    ChannelAccept,
    ChannelOpen,
    Message,
)

log = logging.getLogger("porthole.agent.shell")

WINDOW = 64 * 1024
KILL_GRACE = 2.0


def set_winsize(fd: int, cols: int, rows: int) -> None:
    cols, rows = max(1, min(cols, 10000)), max(1, min(rows, 10000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _make_controlling_tty() -> None:  # runs in the child between fork and exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyChannel(AgentChannel):
    receive_window = WINDOW

    def __init__(self, open_msg: ChannelOpen, config: AgentConfig,
                 send: Callable[[Message], None], on_done: Callable[[int], None]) -> None:
        super().__init__(open_msg, config, send, on_done)
        self.proc: asyncio.subprocess.Process | None = None
        self.master = -1
        self._reading = False
        self._pending_input = bytearray()
        self._eof = False
        self._finished = asyncio.Event()
        self._started = -1

    async def start(self) -> None:
        user = str(self.params.get("user") or self.config.session_user)
        if not self.config.allows(user):
            raise ChannelRefused("RunAsNotAllowed",
                                 f"this agent's allowed_users does not include {user!r}")
        try:
            if user == self.config.session_user:
                ensure_session_user(user, self.config.session_user_sudo)
            account = run_as(user)
        except RunAsError as exc:
            raise ChannelRefused(exc.code, str(exc)) from None
        command = self.params.get("command")
        argv = [account.shell, "-l"] + (["-c", str(command)] if command else [])
        env = account.env(TERM=str(self.params.get("term") or "xterm-256color"))
        master, slave = os.openpty()
        try:
            set_winsize(slave, int(self.params.get("cols", 80)), int(self.params.get("rows", 24)))
            self.proc = await asyncio.create_subprocess_exec(
                *argv, stdin=slave, stdout=slave, stderr=slave, cwd=account.home, env=env,
                start_new_session=True, preexec_fn=_make_controlling_tty,
                **account.popen,  # type: ignore[arg-type]
            )
        except OSError as exc:
            os.close(master)
            raise ChannelRefused("ProcessCreateFailed", f"cannot start {argv[0]}: {exc}") from None
        finally:
            os.close(slave)
        self._started = start_time(self.proc.pid)
        self.master = master
        os.set_blocking(master, False)
        log.info("channel %d: shell for %s started (pid %d)", self.id, user, self.proc.pid)
        self.send(ChannelAccept(self.id, WINDOW))
        self.credit_changed()
        asyncio.create_task(self._wait())

    # --- output: PTY -> peer -----------------------------------------------------------

    def credit_changed(self) -> None:
        if self.master >= 0:
            self._update_reader()

    def _update_reader(self) -> None:
        want = not self._eof and self.endpoint.sender.available() > 0
        loop = asyncio.get_running_loop()
        if want and not self._reading:
            loop.add_reader(self.master, self._on_readable)
        elif not want and self._reading:
            loop.remove_reader(self.master)
        self._reading = want

    def _on_readable(self) -> None:
        # A PTY hands out at most a few KiB per read: gather what is ready into one frame.
        room = min(self.endpoint.sender.available(), MAX_CHUNK)
        data = bytearray()
        while len(data) < room:
            try:
                chunk = os.read(self.master, room - len(data))
            except BlockingIOError:
                break
            except OSError as exc:  # EIO: every process holding the PTY's other side is gone
                if exc.errno != errno.EIO:
                    log.warning("channel %d: reading the PTY failed: %s", self.id, exc)
                chunk = b""
            if not chunk:
                self._eof = True
                break
            data += chunk
        if data:
            self.send(self.endpoint.sender.send(bytes(data)))
        self._update_reader()
        if self._eof:
            self._finished.set()

    # --- input: peer -> PTY ------------------------------------------------------------

    def _write_input(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending_input:
            try:
                n = os.write(self.master, self._pending_input)
            except BlockingIOError:
                loop.add_writer(self.master, self._on_writable)
                return
            except OSError:
                self._pending_input.clear()
                return
            del self._pending_input[:n]
            self.consumed(n)

    def _on_writable(self) -> None:
        asyncio.get_running_loop().remove_writer(self.master)
        self._write_input()

    def on_data(self, data: bytes) -> None:
        if self.master >= 0:
            self._pending_input += data
            self._write_input()

    def on_resize(self, cols: int, rows: int) -> None:
        if self.master >= 0:
            set_winsize(self.master, cols, rows)

    # --- lifetime ----------------------------------------------------------------------

    async def _wait(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # Output written just before the exit may still be in the PTY: read it out until EOF
        # (a leftover process holding the PTY is ended).
        await self.drain_output(self._finished, self._hang_up)
        self._kill_session(signal.SIGKILL)
        self._close_master()
        status = 128 - code if code < 0 else code
        log.info("channel %d: shell exited with %d", self.id, status)
        self.finish("exited", status)

    async def terminate(self) -> None:
        """End the session: SIGHUP to everything in it, then SIGKILL."""
        if self.proc is None or self.proc.returncode is not None:
            self.forget()
            return
        self._kill_session(signal.SIGHUP)
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), KILL_GRACE)
        except TimeoutError:
            self._kill_session(signal.SIGKILL)
        self._finished.set()  # do not wait for output nobody will read

    def _hang_up(self) -> None:
        self._kill_session(signal.SIGHUP)
        self._kill_session(signal.SIGKILL)

    def _kill_session(self, sig: int) -> None:
        """Signal every process in the shell's session (the shell and all its jobs), found
        by session id, unless the shell is gone and its pid :func:`recycled`."""
        if self.proc is None or recycled(self.proc.pid, self._started):
            return
        for pid in session_processes(self.proc.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def _close_master(self) -> None:
        if self.master >= 0:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.master)
            loop.remove_writer(self.master)
            os.close(self.master)
            self.master = -1
            self._reading = False

    def release(self) -> None:
        self._close_master()
