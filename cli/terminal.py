"""The local terminal: raw mode that is always restored, window size, and `~.` escapes."""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import tty
from types import TracebackType


class RawMode:
    """Put a TTY in raw mode for the life of a ``with`` block; no-op when not a TTY."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list | None = None

    def __enter__(self) -> RawMode:
        if os.isatty(self.fd):
            self.saved = termios.tcgetattr(self.fd)
            tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        if self.saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
            self.saved = None

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.restore()


def window_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on ``fd``, or 80x24."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
        if rows and cols:
            return cols, rows
    except OSError:
        pass
    return 80, 24


class EscapeFilter:
    """ssh-style escapes: ``~.`` after a newline ends the session; ``~~`` sends one ``~``."""

    def __init__(self) -> None:
        self.line_start = True
        self.tilde = False

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """Returns (bytes to send, whether the operator asked to disconnect)."""
        out = bytearray()
        for byte in data:
            ch = bytes([byte])
            if self.tilde:
                self.tilde = False
                if ch == b".":
                    return bytes(out), True
                out += b"~" if ch == b"~" else b"~" + ch
            elif self.line_start and ch == b"~":
                self.tilde = True
                continue
            else:
                out += ch
            self.line_start = ch in (b"\r", b"\n")
        return bytes(out), False
