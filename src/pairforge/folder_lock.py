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
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pairforge.errors import InputError


@contextmanager
def held(path: Path, option: str) -> Iterator[Callable[[], None]]:
    """Hold the lock file `path` for the `with` block; a folder another process holds is bad input: one line naming
    the folder and that process, under `option` (the flag or key that chose the folder). The lock file goes when the
    block ends (a crash leaves it, with its dead pid), and so does a folder made for it that stayed empty: a failed
    check leaves nothing behind. The block gets a check to call between steps: the folder moved or removed meanwhile
    (a second command may now hold a new one at the same path) stops this one rather than mixing their outputs."""
    folder = Path(path).parent
    made = not folder.exists()
    fd = _locked(Path(path), option)

    def still_held() -> None:
        if not _is_at(Path(path), fd):
            raise InputError(option, f"{folder} was moved or removed while this command worked in it ({path} is "
                             "no longer its lock file): stopped, so as not to write into a folder it does not hold")

    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield still_held
    finally:
        with suppress(OSError):  # a folder removed by hand meanwhile: nothing to tidy
            if _is_at(Path(path), fd):  # never another command's lock, in a new folder at the old path
                Path(path).unlink()  # while still held: one that opened it meanwhile sees it gone
            if made and not any(folder.iterdir()):
                folder.rmdir()
        os.close(fd)  # releases the lock


def in_use(path: Path) -> bool:
    """Whether a live process holds the lock file `path` now (one a killed process left behind is held by none).
    Asked with a shared lock taken and dropped at once, so it never blocks."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _locked(path: Path, option: str) -> int:
    """An open descriptor of `path` holding its lock (its folder made if need be). The lock is on the file the name
    points to now: one removed between this open and lock (its holder ending) is not taken for it."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _opened(path, option)
        if fd is None:  # the folder was removed after a failed first command: make it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(option, f"{path.parent} is in use by another pairforge command ({_holder(path)}): "
                             "wait for it to finish, or choose another folder") from None
        if _is_at(path, fd):
            return fd
        os.close(fd)


def _opened(path: Path, option: str) -> int | None:
    """`path` opened (made if missing) as a regular file, never through a symlink: anything else at the lock path is
    the user's, so it is refused in one line, untouched, rather than written through, blocked on or deleted later.
    None: the folder is gone (removed just now)."""
    try:
        _refuse_odd(path, os.lstat(path).st_mode, option)  # a FIFO or device is refused before it is ever opened
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except FileNotFoundError:
        return None
    except OSError as exc:  # put there since the lstat (a symlink: ELOOP), or a file we may not write
        with suppress(OSError):
            _refuse_odd(path, os.lstat(path).st_mode, option)
        raise InputError(option, f"{path} cannot be opened for writing ({exc.strerror}), "
                         "expected a regular lock file pairforge can write") from None
    try:
        _refuse_odd(path, os.fstat(fd).st_mode, option)
    except InputError:
        os.close(fd)
        raise
    return fd


def _refuse_odd(path: Path, mode: int, option: str) -> None:
    """Bad input unless `mode` is a regular file's, in one line naming what is there."""
    if stat.S_ISREG(mode):
        return
    kinds = {stat.S_ISLNK: "a symlink", stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISSOCK: "a socket"}
    kind = next((name for test, name in kinds.items() if test(mode)), "a device file")
    raise InputError(option, f"{path} is {kind}, expected a regular lock file: move it out of the way "
                     "(pairforge never writes through or deletes what it did not make)")


def _is_at(path: Path, fd: int) -> bool:
    """Whether the open file `fd` is still the one named `path` (not replaced, removed or moved away since)."""
    try:
        named, opened = os.stat(path, follow_symlinks=False), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def _holder(path: Path) -> str:
    """'pid N' from the lock file (unknown: the holder has just taken the lock, or just ended)."""
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
