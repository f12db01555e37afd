"""One writer per run folder at a time: `pairforge run` and the stage commands that write a run folder hold
its lock while they work, so a second command on the same folder stops at once instead of interleaving a training
log or replacing the first one's outputs with answers to another recipe.

The lock is an advisory `flock` on the folder's lock file (`RunDir.lock`), which holds the holder's process
id. The kernel drops the lock when its process ends, however it ends (kill -9 included), so the file a dead
process left behind is simply locked again by the next command.
POSIX only (Linux, macOS), like the rest of the run folder's crash safety.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pairforge.errors import InputError


@contextmanager
def held(path: Path, option: str) -> Iterator[None]:
    """Hold the lock file `path` for the `with` block; a folder another process holds is bad input: one line naming
    the folder and that process, under `option` (the flag or key that chose the folder). The lock file goes when the
    block ends (a crash leaves it, with its dead pid), and so does a folder made for it that stayed empty: a failed
    check leaves nothing behind."""
    folder = Path(path).parent
    made = not folder.exists()
    fd = _locked(Path(path), option)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        with suppress(OSError):  # a folder removed by hand meanwhile: nothing to tidy
            Path(path).unlink(missing_ok=True)  # while still held: one that opened it meanwhile sees it gone
            if made and not any(folder.iterdir()):
                folder.rmdir()
        os.close(fd)  # releases the lock


def _locked(path: Path, option: str) -> int:
    """An open descriptor of `path` holding its lock (its folder made if need be). The lock is on the file the name
    points to now: one removed between this open and lock (its holder ending) is not taken for it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed after a failed first command: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(option, f"{path.parent} is in use by another pairforge command ({_holder(path)}): "
                             "wait for it to finish, or choose another folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _holder(path: Path) -> str:
    """'pid N' from the lock file (unknown: the holder has just taken the lock, or just ended)."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
