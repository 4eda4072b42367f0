"""How the DuckDB log turns DuckDB's errors into typed ones, and what it counts as damage.

``translate_duckdb_errors`` wraps every public method of ``DuckEventLog`` (and its opening): a
DuckDB error becomes ``StoreDamaged`` where the message says a file is damaged (a failed
checksum, an unreadable block or WAL) and a ``StoreError`` naming the store otherwise; each call
also holds the log's lock, so threads sharing a log take turns.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import re
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import duckdb

from store.errors import StoreDamaged, StoreError, StoreFull, StoreLocked

__all__ = ["OPEN_WRITERS", "READ_ALL", "is_damage", "translate_duckdb_errors", "translate_open_error", "unlocked", "translated_errors"]

T = TypeVar("T")
OPEN_WRITERS: set[str] = set()  # stores this process holds open for writing (their real paths)
_LOCK_RE = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def translate_open_error(path: str, e: duckdb.Error) -> StoreError:
    msg = str(e)
    m = _LOCK_RE.search(msg)
    if m:
        return StoreLocked(path, f"{m.group(1)}, PID {m.group(2)}")
    if "Could not set lock" in msg:
        return StoreLocked(path, "unknown process")
    return StoreDamaged(path, "DuckDB could not open log.duckdb", msg) if is_damage(msg) else StoreError(
        f"could not open store {path}: {msg}"
    )


# every column of every table, so that every block is read (and its checksum checked)
READ_ALL = (
    "SELECT bit_xor(hash(id, parent, branch, seq, kind, schema, recorded_at, payload)) FROM events",
    "SELECT bit_xor(hash(name, ord, base_branch, base_seq, base_id, head_seq, head_id, created_at)) FROM branches",
    "SELECT bit_xor(hash(branch, seq, event_id, key, data)) FROM snapshots",
    "SELECT bit_xor(hash(key, value)) FROM meta",
)

_DAMAGE = ("Corrupt", "corrupt", "checksum", "replaying WAL", "not a valid DuckDB database", "Serialization Error",
           "Could not read enough bytes", "INTERNAL Error", "Invalid Input Error: Invalid block")


def is_damage(msg: str) -> bool:
    return any(m in msg for m in _DAMAGE)


def _as_store_error(path: str, e: duckdb.Error) -> StoreError:
    """A DuckDB error raised while using the store at ``path``, as the store's own error."""
    msg = str(e)
    if is_damage(msg):
        return StoreDamaged(path, "DuckDB could not read log.duckdb", msg)
    if is_full(msg):
        return StoreFull(path, msg)
    return StoreError(f"DuckDB failed on store {path} ({type(e).__name__}): {msg}")


def is_full(msg: str) -> bool:
    return "No space left on device" in msg or "Disk quota exceeded" in msg


def unlocked(fn: Callable[..., T]) -> Callable[..., T]:
    """Mark a public method that takes the log's lock itself, for part of its run (``append``:
    its fsync is shared with other threads' appends, so it waits outside the lock)."""
    setattr(fn, "_sia_unlocked", True)
    return fn


@contextlib.contextmanager
def translated_errors(path: str) -> Iterator[None]:
    """DuckDB's errors and a full disk as the store's own typed errors (what every method gets)."""
    try:
        yield
    except duckdb.Error as e:
        raise _as_store_error(path, e) from e
    except OSError as e:  # the journal's or heads file's own writes
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFull(path, str(e)) from e
        raise


def _translated(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a method, or a generator method) holding the log's lock, its DuckDB errors translated."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen(self: Any, *a: Any, **kw: Any) -> Any:
            with self._lock:
                try:
                    yield from fn(self, *a, **kw)
                except duckdb.Error as e:
                    raise _as_store_error(self.path, e) from e

        return gen

    @functools.wraps(fn)
    def method(self: Any, *a: Any, **kw: Any) -> Any:
        with self._lock, translated_errors(self.path):
            return fn(self, *a, **kw)

    return method


def _translated_init(init: Callable[..., None]) -> Callable[..., None]:
    """``__init__`` giving the log its lock; a DuckDB error while opening closes what was opened
    (the connection, the hold on the store) and is translated."""

    @functools.wraps(init)
    def opening(self: Any, *a: Any, **kw: Any) -> None:
        self._lock = threading.RLock()
        try:
            init(self, *a, **kw)
        except duckdb.Error as e:
            con = getattr(self, "_con", None)
            if con is not None:
                with contextlib.suppress(duckdb.Error):
                    con.close()
            OPEN_WRITERS.discard(getattr(self, "_key", ""))
            raise _as_store_error(self.path, e) from e

    return opening


def translate_duckdb_errors(cls: type[T]) -> type[T]:
    """Every public method of the log (and every generator it returns) raises a typed error
    where DuckDB raises its own: ``StoreDamaged`` for a damaged file (a failed checksum, an
    unreadable block or WAL), ``StoreError`` naming the store for anything else. Errors the log
    already translates are ``StoreError``s and pass through. Each call also holds the log's
    lock: threads sharing one log take turns (a DuckDB connection, the journal and the head
    cache are not safe to use from two threads at once), so a race on a branch head is decided
    by the compare-and-swap, one winner and a ``ConcurrencyError`` for the other."""
    setattr(cls, "__init__", _translated_init(vars(cls)["__init__"]))
    for klass in cls.__mro__:  # the class's own methods first, then what it inherits
        for name, fn in list(vars(klass).items()):
            if getattr(fn, "_sia_unlocked", False):
                continue
            if not name.startswith("_") and inspect.isfunction(fn) and (klass is cls or name not in vars(cls)):
                setattr(cls, name, _translated(fn))
    return cls
