"""What the parent reads back from the jail, none of which the code inside can turn on it: its
output streams (read as they come, kept up to a cap, the rest counted), its refusals (a pipe), the
files asked for (never through a link, regular files only, size-capped), and the scratch folder
removed whatever it holds."""

from __future__ import annotations

import errno
import os
import selectors
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Sequence

from sia_engine.errors import SiaError

__all__ = ["MAX_TEXT", "Capped", "SandboxCleanupError", "drain", "refusal_lines", "read_outputs", "remove_tree"]

MAX_TEXT = 20_000  # characters of stdout and of stderr kept
_GRACE_S = 5.0  # after the time limit: how long the killed tree may take to let go of its pipes


def _text(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + f"\n... [{len(text) - MAX_TEXT} more characters]"


class SandboxCleanupError(SiaError):
    """The scratch folder could not be removed after a run."""

    def __init__(self, path: str, why: str = "the code left something even root cannot delete there") -> None:
        super().__init__(f"the sandbox's scratch folder {path} could not be removed ({why}); remove it by hand")


class Capped:
    """The first ``cap`` bytes of a stream, and how many bytes it had in all."""

    def __init__(self, cap: int) -> None:
        self.cap, self.head, self.total = cap, b"", 0

    def add(self, chunk: bytes) -> None:
        if len(self.head) < self.cap:
            self.head += chunk[: self.cap - len(self.head)]
        self.total += len(chunk)

    def text(self) -> str:
        text = _text(self.head)
        return text if self.total <= len(self.head) else text + f"\n... [{self.total - len(self.head)} more bytes not kept]"


def drain(caps: dict[int, Capped], deadline: float, kill: Callable[[], None]) -> bool | None:
    """Read every fd of ``caps`` to its end; at ``deadline`` call ``kill`` and allow ``_GRACE_S``
    more. False: all ended in time; True: killed, then all ended; None: still open after the grace."""
    sel = selectors.DefaultSelector()
    for fd in caps:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    killed = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if killed:
                    return None
                kill()  # the caller's: it copes with a process already gone
                killed, deadline = True, time.monotonic() + _GRACE_S
                continue
            for key, _ in sel.select(timeout=left):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    caps[key.fd].add(chunk)
                else:
                    sel.unregister(key.fd)
        return killed
    finally:
        sel.close()


def refusal_lines(refused: Capped) -> tuple[str, ...]:
    lines = tuple(x for x in refused.head.decode("utf-8", "replace").splitlines() if x)
    return lines if refused.total <= len(refused.head) else (*lines, f"... [{refused.total - len(refused.head)} more bytes of refusals]")


def read_outputs(scratch: str, names: Sequence[str], limit: int) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """The files ``names`` of the scratch folder the code left, each read only if it is a regular
    file (opened without following a symlink, checked on the open file) of at most ``limit`` bytes;
    what was refused, as refusal lines."""
    got: dict[str, bytes] = {}
    refused: list[str] = []
    dir_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in names:
            if os.path.basename(name) != name or name in (".", ".."):
                refused.append(f"output {name!r}: not a plain file name")
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as e:  # ELOOP: a symlink
                refused.append(f"output {name}: not read ({'a symlink' if e.errno == errno.ELOOP else e.strerror})")
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    refused.append(f"output {name}: not a regular file")
                elif st.st_nlink != 1:  # a hard link: its bytes may be a file outside the scratch folder
                    refused.append(f"output {name}: not read (a hard link)")
                elif st.st_size > limit or len(data := _read_upto(fd, limit + 1)) > limit:
                    refused.append(f"output {name}: over {limit} bytes")
                else:
                    got[name] = data
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return got, tuple(refused)


def _read_upto(fd: int, n: int) -> bytes:
    os.set_blocking(fd, True)
    parts, left = [], n
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def remove_tree(path: str) -> None:
    """Remove the scratch folder whatever the code left in it: any depth (``rm -rf`` walks it
    without recursion), read-only folders, immutable files (their flag cleared when root)."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):  # a chain deeper than Python's recursion, or something it may not delete
        pass
    rm = subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, check=False)
    if rm.returncode != 0 and os.path.lexists(path) and shutil.which("chattr"):
        subprocess.run(["chattr", "-R", "-i", "-a", path], capture_output=True, check=False)
        subprocess.run(["chmod", "-R", "u+rwx", path], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, check=False)
    if os.path.lexists(path):
        raise SandboxCleanupError(path)
