"""Terminal channels (kind ``shell``): the implementation for this platform, a PTY on Linux
(``agent.pty_shell``) and a ConPTY on Windows (``agent.windows.terminal``), both with the
same contract: credit flow, resize, and the whole process tree ended with the channel."""

from __future__ import annotations

import sys

if sys.platform == "win32":
    from agent.windows.terminal import ConPtyChannel as ShellChannel
else:
    from agent.pty_shell import PtyChannel as ShellChannel

__all__ = ["ShellChannel"]
