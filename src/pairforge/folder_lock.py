"""One writer per run folder at a time: `pairforge run` and the stage commands that write a run folder hold
its lock while they work, so a second command on the same folder stops at once instead of interleaving a training
log or replacing the first one's outputs with answers to another recipe.

The lock is an advisory `flock` on the folder's lock file (`RunDir.lock`), which holds the holder's process
id. The kernel drops the lock when its process ends, however it ends (kill -9 included), so a lock left by a dead process is
simply taken over; the file itself stays (removing it would let two processes lock two different files).
POSIX only (Linux, macOS), like the rest of the run folder's crash safety.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pairforge.errors import InputError


@contextmanager
def held(path: Path, option: str) -> Iterator[None]:
    """Hold the lock file `path` for the `with` block (its folder is made if need be); a folder another process
    holds is bad input: one line naming the folder and that process, under `option` (the flag or key that chose
    the folder)."""
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(option, f"{folder} is in use by another pairforge command ({_holder(path)}): wait for "
                             "it to finish, or choose another folder") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def _holder(path: Path) -> str:
    """'pid N' from the lock file; the holder may not have written it yet (it has just taken the lock)."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid not written yet"
