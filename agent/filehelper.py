"""File operations of a copy, run as the copying user in a process of its own.

The agent starts ``python -m agent.filehelper OP PATH ...`` with the run-as user's uid, gid
and groups, so the kernel decides what that user may read and write. Results (checksum,
size, or an error) go to stderr as one JSON line; file content goes over stdin/stdout.

    put PATH MODE MTIME   stdin -> PATH, atomically (temporary name, fsync, rename)
    get PATH              PATH -> stdout, after a JSON header line {size, mode, mtime}
    mkdir PATH MODE       create PATH and missing parents
    list PATH             one JSON line per entry below PATH: {path, type, mode, mtime, size}
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import sys
import tempfile

CHUNK = 256 * 1024


def _result(**values: object) -> None:
    sys.stderr.write(json.dumps(values) + "\n")
    sys.stderr.flush()


def put(path: str, mode: int, mtime: float) -> None:
    directory, name = os.path.split(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".porthole", dir=directory or "/")
    except OSError as exc:  # name the file the user asked for, not our temporary one
        raise type(exc)(exc.errno, exc.strerror, path) from None
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as f:
            stdin = sys.stdin.buffer
            assert isinstance(stdin, io.BufferedReader)
            while chunk := stdin.read1(CHUNK):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.utime(tmp, (mtime, mtime))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _result(sha256=digest.hexdigest(), size=size)


def get(path: str) -> None:
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{path} is not a regular file")
        out = sys.stdout.buffer
        header = {"size": st.st_size, "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime}
        out.write(json.dumps(header).encode() + b"\n")
        digest, size = hashlib.sha256(), 0
        while chunk := f.read(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        out.flush()
    _result(sha256=digest.hexdigest(), size=size)


def mkdir(path: str, mode: int) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
    _result(path=path)


def listing(path: str) -> None:
    out = sys.stdout
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            full = os.path.join(root, name)
            st = os.lstat(full)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(
                st.st_mode) else "other"
            out.write(json.dumps({"path": os.path.relpath(full, path), "type": kind,
                                  "mode": stat.S_IMODE(st.st_mode), "mtime": st.st_mtime,
                                  "size": st.st_size}) + "\n")
    out.flush()
    _result(path=path)


def main(argv: list[str]) -> int:
    try:
        op, path = argv[0], argv[1]
        if op == "put":
            put(path, int(argv[2], 8), float(argv[3]))
        elif op == "get":
            get(path)
        elif op == "mkdir":
            mkdir(path, int(argv[2], 8))
        elif op == "list":
            listing(path)
        else:
            raise ValueError(f"unknown operation {op!r}")
    except (OSError, ValueError, IndexError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        name = getattr(exc, "filename", None)
        _result(error=f"{name}: {message}" if name else message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
