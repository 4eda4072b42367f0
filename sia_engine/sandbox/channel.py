"""A live, line-based channel between the caller and the code in the sandbox, for a judge that
must talk to the code while it runs (say what to do next, only after the code has answered the
last question) and time its answers on a clock the code cannot touch.

The code's end is a socket inherited as the file descriptor named in ``SIA_CHANNEL_FD``. The
caller's end is a ``Channel``: ``send`` one JSON-ready message, ``recv`` the next line and the
monotonic time (ns) it arrived. Whatever the code sends is bounded: a line longer than
``max_line``, or more than ``max_total`` bytes in all, ends the channel (``overflowed`` says so),
never the caller's memory. The caller's part runs in a thread beside the sandbox's reader; when
the sandbox's processes end, the channel is shut down, so a ``recv`` waiting on them returns
``None`` (end of channel) instead of waiting forever; when the caller's part returns, it is shut
down too, so code blocked reading or writing it is not left waiting until its time limit.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Channel", "CHANNEL_ENV", "talking"]

CHANNEL_ENV = "SIA_CHANNEL_FD"
_JOIN_S = 60.0  # how long the caller's part may take to finish once the sandbox has ended


class Channel:
    """The caller's end. ``recv``: (a line without its newline, or None at the end; the
    ``time.monotonic_ns`` at which it arrived). ``send``: the ``time.monotonic_ns`` just before it
    left (so no answer can predate it), or None when the code's end is gone."""

    def __init__(self, sock: socket.socket, *, max_line: int = 1 << 20, max_total: int = 256 << 20) -> None:
        self._sock = sock
        self._buf = b""
        self.max_line, self.max_total = max_line, max_total
        self.received = 0  # bytes, in all
        self.overflowed = ""  # why the channel was cut ("" while it was not)
        self.closed = False

    def send(self, message: dict[str, Any]) -> int | None:
        if self.closed:
            return None
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        t = time.monotonic_ns()  # before it can arrive: a window measured from here is never shorter than the work it holds
        try:
            self._sock.sendall(data)
        except OSError:  # the code's end is closed, or the sandbox has ended
            self.closed = True
            return None
        return t

    def recv(self) -> tuple[bytes | None, int]:
        while b"\n" not in self._buf:
            if self.closed:
                return None, time.monotonic_ns()
            if len(self._buf) > self.max_line:
                return self._cut(f"a line over {self.max_line} bytes")
            try:
                chunk = self._sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                return None, time.monotonic_ns()
            self.received += len(chunk)
            if self.received > self.max_total:
                return self._cut(f"over {self.max_total} bytes in all")
            self._buf += chunk
        arrived = time.monotonic_ns()
        line, _, self._buf = self._buf.partition(b"\n")
        if len(line) > self.max_line:
            return self._cut(f"a line over {self.max_line} bytes")
        return line, arrived

    def _cut(self, why: str) -> tuple[None, int]:
        self.overflowed, self.closed, self._buf = why, True, b""
        return None, time.monotonic_ns()


@contextlib.contextmanager
def talking(talk: Callable[[Channel], None] | None) -> Iterator[tuple[int | None, Callable[[], None], Callable[[], None]]]:
    """(the code's fd to pass on, or None without ``talk``; start the caller's part; end it). Ending
    shuts the channel down and waits for ``talk`` to return; an exception ``talk`` raised is
    raised again there (a bug of the caller's, never something the code did)."""
    if talk is None:
        yield None, lambda: None, lambda: None
        return
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            talk(Channel(mine))
        except BaseException as e:  # noqa: BLE001 - carried to the caller's thread
            failure.append(e)
        finally:  # the caller has said all it will: the code's reads end and its writes fail, so it cannot wait on us
            with contextlib.suppress(OSError):
                mine.shutdown(socket.SHUT_RDWR)

    thread = threading.Thread(target=run, name="sandbox-channel", daemon=True)
    ended = False

    def start() -> None:
        theirs.close()  # the child has its copy: the channel ends when the sandbox's processes have let go of it
        thread.start()

    def end() -> None:
        nonlocal ended
        if ended:
            return
        ended = True
        with contextlib.suppress(OSError):
            mine.shutdown(socket.SHUT_RDWR)
        if thread.ident is not None:  # started
            thread.join(_JOIN_S)
        mine.close()
        if failure:
            raise failure[0]

    try:
        yield theirs.fileno(), start, end
    finally:
        theirs.close()
        end()
