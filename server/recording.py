"""Session recordings in asciicast v2 (https://docs.asciinema.org/manual/asciicast/v2/)."""

from __future__ import annotations

import codecs
import json
import time
from pathlib import Path
from typing import IO, Any

FLUSH_INTERVAL = 0.5
"""Seconds between flushes: a flood of output costs no flush per frame."""


class Recorder:
    def __init__(self, path: Path, cols: int, rows: int, meta: dict[str, Any],
                 record_input: bool) -> None:
        """Start a recording, or continue an existing one (after a server restart)."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.record_input = record_input
        self._flushed = 0.0
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self.started = float(int(time.time()))  # the header's timestamp is an integer
        if path.exists() and path.stat().st_size:
            with open(path, encoding="utf-8") as f:
                self.started = float(json.loads(f.readline()).get("timestamp", self.started))
            self._file: IO[str] | None = open(path, "a", encoding="utf-8")  # noqa: SIM115
            return
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115
        header = {"version": 2, "width": cols, "height": rows, "timestamp": int(self.started),
                  "env": {"TERM": meta.get("term", ""), "SHELL": meta.get("shell", "")},
                  "title": meta.get("title", "")}
        self._write(header)

    def _write(self, item: object) -> None:
        if self._file is not None:
            self._file.write(json.dumps(item, ensure_ascii=False) + "\n")
            now = time.monotonic()
            if now - self._flushed > FLUSH_INTERVAL:
                self._file.flush()
                self._flushed = now

    def _event(self, kind: str, text: str) -> None:
        if text:
            self._write([round(time.time() - self.started, 6), kind, text])

    def output(self, data: bytes) -> None:
        self._event("o", self._out.decode(data))

    def input(self, data: bytes) -> None:
        if self.record_input:
            self._event("i", self._in.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def name(self, data_dir: Path) -> str:
        return str(self.path.relative_to(data_dir))

    def close(self) -> None:
        if self._file is not None:
            self._event("o", self._out.decode(b"", final=True))
            self._file.close()
            self._file = None


class NullRecorder:
    """Stands in for a Recorder where nothing is recorded (port forwarding)."""

    def name(self, data_dir: Path) -> str:
        return ""

    def output(self, data: bytes) -> None:
        pass

    def input(self, data: bytes) -> None:
        pass

    def resize(self, cols: int, rows: int) -> None:
        pass

    def close(self) -> None:
        pass
