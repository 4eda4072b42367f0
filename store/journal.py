"""``Journal``: the durable write-ahead file in front of the DuckDB log.

A DuckDB commit costs about 2 ms on a small machine whatever its size (statement overhead, then
the WAL fsync), which would dominate a loop that records every step before the next. Small
batches are therefore made durable by appending one line to ``log.duckdb.journal`` and fsyncing
it (well under a millisecond); they reach DuckDB in one transaction per ~thousand events, before
any read, and when the log closes. After a crash the next read-write open checks every line (a
batch whose ids, recomputed from its contents, are not the ids it names is damage, not a torn
write) and only then replays them into DuckDB and empties the journal. The one line that may be
dropped is a last line cut short by the crash: a strict prefix of a batch, which was never
acknowledged (``append`` returns after the newline is fsynced). A last line that holds a whole
batch is kept, whatever follows it; anything else is damage, and the journal is left as it is. The journal is a buffer, never a second source of truth: every line it holds is
either already in DuckDB (checked by id) or follows the branch's head there.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from datetime import datetime

import msgspec

from store.envelope import BranchInfo, NewEvent, check_branch_name, seal
from store.errors import InvalidEnvelope, InvalidName, JournalDamaged

__all__ = ["Batch", "Journal", "check_batch"]


class Batch(msgspec.Struct):
    """A sealed batch for one branch: rows ``first_seq ..`` chained after ``parent``."""

    branch: str
    first_seq: int
    parent: str | None
    at: datetime
    ids: list[str]
    kinds: list[str]
    schemas: list[int]
    payloads: list[str]
    # a new ref instead of events (``ids`` and the other columns empty): a fork or a new root,
    # made durable by its line like a batch (lines written before refs took the journal have none)
    ref: BranchInfo | None = None
    # sha256 of the line's bytes before this field (written last): any changed byte, the unhashed
    # ``at`` and ``first_seq`` included, is seen (lines written before it have none)
    sum: str = ""


_ENC = msgspec.json.Encoder()
_DEC = msgspec.json.Decoder(Batch)


def _truncated(e: msgspec.DecodeError) -> bool:
    """msgspec's error for input that ends before the document does (a strict prefix)."""
    return "truncated" in str(e)


_EMPTY_SUM = b',"sum":""}'
_SUM_KEY = b',"sum":"'
_SUM_TAIL = len(_SUM_KEY) + 64 + len(b'"}')  # the bytes from the sum's key to the line's end


def _sum_ok(line: bytes) -> bool | None:
    """Whether the line's bytes before its sum hash to it (None: a line written without one)."""
    if line.endswith(b"]}"):  # an older engine's line ends with its payloads
        return None
    tail = line[-_SUM_TAIL:]
    if len(line) < _SUM_TAIL or not tail.startswith(_SUM_KEY) or not tail.endswith(b'"}'):
        return False
    return hashlib.sha256(line[:-_SUM_TAIL]).hexdigest().encode() == tail[len(_SUM_KEY):-2]


def check_batch(b: Batch, path: str, line: int) -> None:
    """Recompute the batch's ids from its branch, parent, kinds, schemas and payloads; a batch
    whose ids differ was altered after it was written (``JournalDamaged``). (``Journal.read``
    has checked each line's bytes against its sum.)"""
    n = len(b.ids)
    if b.ref is not None:
        r = b.ref
        try:
            check_branch_name(r.name)
            check_branch_name(r.base_branch)
        except InvalidName:
            raise JournalDamaged(path, line, f"it is not a new ref this engine writes (names {r.name!r}, {r.base_branch!r})") from None
        if n or b.kinds or b.schemas or b.payloads or r.name != b.branch or r.head_seq != -1 or r.head_id != r.base_id or (
            b.first_seq != -1 or b.parent is not None or r.base_branch == r.name or r.base_seq is None or r.base_seq < 0
            or r.base_id is None or len(r.base_id) != 64
        ):
            raise JournalDamaged(path, line, f"it is not a new ref this engine writes (branch {b.branch!r}, {n} events, ref {r})")
        return
    if not n or not (len(b.kinds) == len(b.schemas) == len(b.payloads) == n) or b.first_seq < 0:
        raise JournalDamaged(path, line, f"its columns disagree ({n} ids, {len(b.kinds)} kinds, {len(b.schemas)} schemas, "
                                         f"{len(b.payloads)} payloads, first seq {b.first_seq})")
    try:
        sealed = seal(b.branch, b.parent, [NewEvent(k, s, p.encode()) for k, s, p in zip(b.kinds, b.schemas, b.payloads, strict=True)])
    except InvalidEnvelope as e:
        raise JournalDamaged(path, line, f"an event in it is invalid ({e})") from None
    if sealed.ids != b.ids:
        bad = next(i for i, (x, y) in enumerate(zip(sealed.ids, b.ids, strict=True)) if x != y)
        raise JournalDamaged(path, line, f"event {bad} of the batch hashes to {sealed.ids[bad]}, but the line names "
                                         f"{b.ids[bad]}: its contents were altered after it was written")


class Journal:
    """The journal file. ``append`` writes a line and makes it durable; ``write`` and ``sync``
    split that in two for group commit: lines written by several callers (each holding the log's
    lock only while it writes) are made durable by one ``fsync``, taken by whichever caller
    reaches ``sync`` first, while the others wait for it and return without one of their own.

    An fsync that fails (a full disk found late, an I/O error) leaves every line since the last
    good one unacknowledged: ``failed`` says so until the log's writer calls ``drop_unsynced``
    (under the log's lock), which cuts them off the file, and each of their callers gets the error."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._mark = (0, 0)  # (the last ticket handed out, the file's size after its line)
        self._synced = 0  # lines known durable (tickets up to this)
        self._synced_size = 0  # the file's size when they were
        self._sync_lock = threading.Lock()  # one fsync at a time; held while it runs
        self.failed: OSError | None = None  # an fsync that failed, until ``drop_unsynced``
        self._lost: list[tuple[int, int, OSError]] = []  # tickets (lo, hi] cut off after a failed fsync, and why

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            size = os.fstat(self._fd).st_size
            self._mark, self._synced_size = (self._mark[0], size), size  # a journal found non-empty was recovered
        return self._fd

    def append(self, batch: Batch) -> None:
        """Write one batch as one line; durable on return."""
        self.sync(self.write(batch))

    def write(self, batch: Batch) -> int:
        """Write one batch as one line, not yet durable; returns its ticket for ``sync``. A write
        that fails (disk full, a quota, an I/O error) leaves no part of the line behind."""
        fd = self._open()
        body = _ENC.encode(msgspec.structs.replace(batch, sum=""))[: -len(_EMPTY_SUM)]
        data = body + _SUM_KEY + hashlib.sha256(body).hexdigest().encode() + b'"}\n'
        start = self._mark[1]
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:  # the batch was not acknowledged, so no part of it stays
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            raise
        self._mark = (self._mark[0] + 1, start + len(data))
        return self._mark[0]

    def sync(self, ticket: int) -> None:
        """Return once line ``ticket`` is durable: one fsync for every line written before it,
        unless another caller's covered it. Raises the fsync's error where it failed."""
        with self._sync_lock:
            for lo, hi, err in self._lost:
                if lo < ticket <= hi:
                    raise err
            if self._synced >= ticket:
                return  # another caller's fsync (or a flush into DuckDB) covered this line
            if self.failed is not None:
                raise self.failed
            target, size = self._mark  # everything written so far goes with this fsync
            try:
                os.fsync(self._open())
            except OSError as e:
                self.failed = e
                raise
            if target > self._synced:
                self._synced, self._synced_size = target, size

    def lost(self, ticket: int) -> bool:
        """Whether line ``ticket`` was cut off after a failed fsync (else it is durable, or
        still to be synced)."""
        with self._sync_lock:
            return any(lo < ticket <= hi for lo, hi, _ in self._lost)

    def drop_unsynced(self) -> int:
        """After a failed fsync (call under the log's lock, so nothing is written meanwhile): cut
        every line after the last durable one off the file; returns the last durable ticket (the
        lines after it are gone, and their ``sync`` raises the failure)."""
        with self._sync_lock:
            err = self.failed
            if err is None:
                return self._mark[0]
            fd = self._open()
            os.ftruncate(fd, self._synced_size)
            with contextlib.suppress(OSError):  # the cut stands in the file either way; a crash now only loses lines never acknowledged
                os.fsync(fd)
            if self._mark[0] > self._synced:
                self._lost.append((self._synced, self._mark[0], err))
            kept = self._synced
            self._synced, self._mark, self.failed = self._mark[0], (self._mark[0], self._synced_size), None
            return kept

    def read(self) -> list[Batch]:
        """Every batch, in order, each as decoded (``check_batch`` checks its ids). Only the last
        line may be torn, and only as a strict prefix of a batch: each line is fsynced, newline
        included, before ``append`` returns. Anything else raises ``JournalDamaged``."""
        try:
            with open(self.path, "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return []
        tail = lines.pop()  # b"" when the file ends with a newline
        out = [self._decode(line, i + 1) for i, line in enumerate(lines)]
        if tail:
            try:
                out.append(self._decode_whole(tail, len(lines) + 1))  # a whole batch whose newline did not make it: kept
            except msgspec.DecodeError as e:
                if not _truncated(e):
                    raise JournalDamaged(self.path, len(lines) + 1, f"the unterminated last line is not a cut-short batch ({e})") from None
                # else: cut short by a crash mid-write, never acknowledged: dropped
            except (msgspec.ValidationError, UnicodeDecodeError, ValueError) as e:
                raise JournalDamaged(self.path, len(lines) + 1, f"the unterminated last line is not a batch ({e})") from None
        return out

    def read_checked(self) -> list[Batch]:
        """``read``, then ``check_batch`` on every batch: what may be replayed into DuckDB."""
        batches = self.read()
        for i, b in enumerate(batches):
            check_batch(b, self.path, i + 1)
        return batches

    def _decode_whole(self, line: bytes, n: int) -> Batch:
        """Line ``n`` as a batch whose bytes match its sum; msgspec's errors pass through."""
        b = _DEC.decode(line)
        if _sum_ok(line) is False:
            raise JournalDamaged(self.path, n, "its bytes do not hash to the sum written with it: it was altered after it was written")
        return b

    def _decode(self, line: bytes, n: int) -> Batch:
        try:
            return self._decode_whole(line, n)
        except (msgspec.MsgspecError, UnicodeDecodeError, ValueError) as e:
            raise JournalDamaged(self.path, n, f"it is not a batch ({e}); a complete line is never a torn write") from None

    def clear(self) -> None:
        """Empty the journal (after its batches are committed to DuckDB, which makes every line
        written so far durable, synced or not)."""
        fd = self._open()
        os.ftruncate(fd, 0)
        os.fsync(fd)
        with self._sync_lock:
            self._synced, self._synced_size, self._mark = self._mark[0], 0, (self._mark[0], 0)
            self.failed = None  # what a failed fsync left unacknowledged is in DuckDB now, durable

    def size(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
