"""`porthole cp`: files and directories to and from instances, checked end to end."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import posixpath
import re
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from cli.client import Client
from cli.common import client, fail
from cli.stream import BULK_WINDOW, ChannelClient, SessionEnded
from proto.messages import MAX_CHUNK

REMOTE_RE = re.compile(r"^(mi-[0-9a-f]{17}):(.+)$")


class CopyError(Exception):
    """A copy failed; str() is one line."""


@dataclass
class Remote:
    instance_id: str
    path: str


def parse(arg: str) -> Remote | Path:
    m = REMOTE_RE.match(arg)
    return Remote(m.group(1), m.group(2)) if m else Path(arg)


class Progress:
    """A rich progress bar with rate and ETA on a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.bar: Any = None
        if sys.stderr.isatty():
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            from rich.progress import (
                Progress as Bar,
            )

            self.bar = Bar(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                           TransferSpeedColumn(), TimeRemainingColumn(), transient=False)
            self.task = self.bar.add_task("copying", total=total)
            self.bar.start()

    def name(self, text: str) -> None:
        if self.bar:
            self.bar.update(self.task, description=text[-40:])

    def advance(self, n: int) -> None:
        if self.bar:
            self.bar.update(self.task, advance=n)

    def close(self) -> None:
        if self.bar:
            self.bar.stop()


class _Transfer(ChannelClient):
    receive_window = BULK_WINDOW
    def __init__(self, api: Client, start: dict[str, Any], progress: Progress) -> None:
        super().__init__(api, start)
        self.progress = progress
        self.notices = False

    def result(self) -> dict[str, Any]:
        close = self.remote_close
        detail = json.loads(close.detail) if close and close.detail else {}
        if "error" in detail:
            raise CopyError(detail["error"])
        return detail

    async def finish_run(self) -> dict[str, Any]:
        try:
            code = await self.run_async()
        except SessionEnded as end:
            raise CopyError(end.message) from None
        result = self.result()
        if code != 0:
            raise CopyError(f"the instance reported status {code}")
        return result


class Upload(_Transfer):
    def __init__(self, api: Client, start: dict[str, Any], source: IO[bytes],
                 progress: Progress) -> None:
        super().__init__(api, start, progress)
        self.source = source
        self.digest = hashlib.sha256()
        self._credit = asyncio.Event()

    async def run(self) -> dict[str, Any]:
        pump = asyncio.create_task(self._pump())
        try:
            return await self.finish_run()
        finally:
            pump.cancel()

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._credit.wait()
            room = min(self.endpoint.sender.available(), MAX_CHUNK)
            if room <= 0 or self.ws is None:
                self._credit.clear()
                continue
            data = await loop.run_in_executor(None, self.source.read, room)
            if not data:
                self.send_eof()
                return
            self.digest.update(data)
            self.send_data(data)
            self.progress.advance(len(data))

    def credit_changed(self) -> None:
        self._credit.set()

    def deliver(self, data: bytes) -> None:
        self.consumed(len(data))


class Download(_Transfer):
    """Receives into ``sink``; a get starts with a JSON header line, a list is JSON lines."""

    def __init__(self, api: Client, start: dict[str, Any], sink: IO[bytes],
                 progress: Progress, header: bool) -> None:
        super().__init__(api, start, progress)
        self.sink = sink
        self.digest = hashlib.sha256()
        self.header: dict[str, Any] | None = None if header else {}
        self._head = bytearray()
        self._pending = 0
        self._write_lock = asyncio.Lock()

    def deliver(self, data: bytes) -> None:
        n = len(data)
        if self.header is None:
            self._head += data
            if b"\n" not in self._head:
                self.consumed(n)
                return
            line, _, data = bytes(self._head).partition(b"\n")
            self.header = json.loads(line)
        self._pending += 1
        asyncio.ensure_future(self._write(data, n))

    async def _write(self, data: bytes, n: int) -> None:
        async with self._write_lock:  # FIFO: writes land in the order they arrived
            await asyncio.get_running_loop().run_in_executor(None, self.sink.write, data)
            self.digest.update(data)  # what was written, in the order it was written
        self._pending -= 1
        self.progress.advance(len(data))
        self.consumed(n)
        await self.maybe_finish()

    def output_idle(self) -> bool:
        return self._pending == 0


class Copier:
    def __init__(self, api: Client, user: str | None, progress: Progress) -> None:
        self.api = api
        self.user = user
        self.progress = progress

    async def _start(self, instance_id: str, op: str, path: str, **extra: Any
                     ) -> dict[str, Any]:
        return await asyncio.to_thread(self.api.call, "StartFileTransfer",
                                       InstanceId=instance_id, Operation=op, Path=path,
                                       Username=self.user, **extra)

    async def upload_file(self, src: Path, dst: Remote) -> None:
        st = src.stat()
        self.progress.name(src.name)
        start = await self._start(dst.instance_id, "Upload", dst.path,
                                  Mode=stat.S_IMODE(st.st_mode), ModifiedTime=st.st_mtime)
        with open(src, "rb") as f:
            upload = Upload(self.api, start, f, self.progress)
            result = await upload.run()
        if result.get("sha256") != upload.digest.hexdigest():
            raise CopyError(f"{dst.path}: checksum mismatch after upload")

    async def upload_tree(self, src: Path, dst: Remote) -> None:
        await self._mkdir(dst, src)
        for entry in sorted(src.iterdir()):
            target = Remote(dst.instance_id, posixpath.join(dst.path, entry.name))
            if entry.is_dir() and not entry.is_symlink():
                await self.upload_tree(entry, target)
            elif entry.is_file():
                await self.upload_file(entry, target)

    async def _mkdir(self, dst: Remote, like: Path) -> None:
        start = await self._start(dst.instance_id, "MakeDirectory", dst.path,
                                  Mode=stat.S_IMODE(like.stat().st_mode))
        await Download(self.api, start, _Discard(), self.progress, header=False).finish_run()

    async def download_file(self, src: Remote, dst: Path) -> None:
        self.progress.name(posixpath.basename(src.path))
        start = await self._start(src.instance_id, "Download", src.path)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".porthole",
                                   dir=dst.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                download = Download(self.api, start, f, self.progress, header=True)
                result = await download.finish_run()
                f.flush()
                os.fsync(f.fileno())
            if result.get("sha256") != download.digest.hexdigest():
                raise CopyError(f"{src.path}: checksum mismatch after download")
            header = download.header or {}
            os.chmod(tmp, int(header.get("mode", 0o644)) & 0o7777)
            os.utime(tmp, (header.get("mtime", 0), header.get("mtime", 0)))
            os.replace(tmp, dst)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    async def download_tree(self, src: Remote, dst: Path) -> None:
        start = await self._start(src.instance_id, "List", src.path)
        listing = _Collect()
        await Download(self.api, start, listing, self.progress, header=False).finish_run()
        dst.mkdir(exist_ok=True)
        root = dst.resolve()
        for line in listing.data.decode().splitlines():
            entry = json.loads(line)
            rel = entry["path"]
            target = (dst / rel).resolve()
            if posixpath.isabs(rel) or ".." in rel.split("/") or not target.is_relative_to(root):
                raise CopyError(f"refusing remote entry {rel!r}: it points outside {dst}")
            if entry["type"] == "dir":
                target.mkdir(exist_ok=True)
                os.chmod(target, entry["mode"])
            elif entry["type"] == "file":
                await self.download_file(Remote(src.instance_id,
                                                posixpath.join(src.path, rel)), target)


class _Discard:
    def write(self, data: bytes) -> int:
        return len(data)


class _Collect:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)


def _total(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@click.command("cp")
@click.option("-r", "--recursive", is_flag=True, help="Copy directories")
@click.option("--user", default=None, help="Read or write on the instance as this user "
              "(default root)")
@click.argument("src")
@click.argument("dst")
def cp(recursive: bool, user: str | None, src: str, dst: str) -> None:
    """Copy SRC to DST; one of them is INSTANCE:/path (a trailing / means "into")."""
    source, target = parse(src), parse(dst)
    if isinstance(source, Remote) == isinstance(target, Remote):
        fail("exactly one of SRC and DST must be INSTANCE:/path")
    api = client()
    if isinstance(source, Path):
        assert isinstance(target, Remote)
        if not source.exists():
            fail(f"{source} does not exist")
        if source.is_dir() and not recursive:
            fail(f"{source} is a directory; use -r")
        if target.path.endswith("/"):
            target = Remote(target.instance_id, target.path + source.resolve().name)
        progress = Progress(_total(source))
        copier = Copier(api, user, progress)
        job = copier.upload_tree(source, target) if source.is_dir() else \
            copier.upload_file(source, target)
    else:
        assert isinstance(target, Path)
        name = posixpath.basename(source.path.rstrip("/"))
        if target.is_dir():
            target = target / name
        progress = Progress(0)
        copier = Copier(api, user, progress)
        job = copier.download_tree(source, target) if recursive else \
            copier.download_file(source, target)
    try:
        asyncio.run(job)
    except CopyError as exc:
        fail(str(exc))
    finally:
        progress.close()
