"""Bundles: branches of a history moved between machines as one self-verifying file.

``write_bundle(store, branches, out)`` (``sia_engine.domain.bundle_write``) writes a zip file (format ``sia-bundle/1``, nothing
compressed but the events):

- ``manifest.json``: the format, each branch's ref (name, base branch, seq and id, head seq and
  id) and event count, and every blob's id, size and suffix;
- ``events/<i>.json``: branch ``i``'s own events (a fork's from its fork point, a root branch's
  all; with ``since``, only those after a seq the receiver holds: ``start`` and ``after_id`` in
  its ref say where they continue), as ``[seq, id, kind, schema, payload]`` rows;
- ``blobs/<id>``: every blob those events name.

``pull_bundle(store, path)`` checks everything before it appends anything: every id recomputed
from its parent, branch, kind, schema and payload (so every parent link holds), every payload
decoded as its kind, each branch's fork point present in the store (or in the bundle) with the
bundled id, every named blob in the bundle (its bytes re-hashed) or in the store. A branch the
store holds must agree with the bundle on every event both have: then only what it lacks is
appended; otherwise ``BundleConflict`` names the branch and the first seq that differs. The
blobs go in first, then every branch's ref and events in one transaction of the log: a pull
killed half-way leaves the log as it was, or complete. Pulling the same bundle twice changes
nothing. A damaged or truncated file is ``BundleDamaged``; nothing is appended.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Union

import msgspec

from sia_engine.domain.canonical import canonical, noncanonical
from sia_engine.domain.events import EVENT_TYPES, Event, decode
from sia_engine.errors import BundleConflict, BundleDamaged, BundleRefused, EventError
from store import BranchImport, BranchInfo, NewEvent, Store
from store.envelope import Sealed, check_branch_name, seal
from store.blobs import SUFFIXES
from store.errors import BlobError, BranchNotFound, EventNotFound, InvalidEnvelope, InvalidName

__all__ = ["FORMAT", "BundleInfo", "PullReport", "pull_bundle", "read_bundle"]

FORMAT = "sia-bundle/1"
MAX_MEMBER = 1 << 32  # 4 GiB: a blob larger than this is refused before it is read
MAX_EVENTS = 1 << 31  # 2 GiB of events' JSON per branch
MAX_MANIFEST = 1 << 26  # 64 MiB
_HEX64 = re.compile(r"[0-9a-f]{64}")
Row = tuple[int, str, str, int, msgspec.Raw]  # seq, id, kind, schema, payload
_ANY: msgspec.json.Decoder[list[Event]] = msgspec.json.Decoder(list[Union[tuple(EVENT_TYPES.values())]])  # type: ignore[misc]  # every kind, by its tag


class BranchRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    base_branch: str | None
    base_seq: int | None
    base_id: str | None
    head_seq: int
    head_id: str | None
    events: int
    start: int = 0  # the first bundled seq: above 0, the receiver must hold the branch up to start - 1
    after_id: str | None = None  # the id at start - 1, which the first bundled event's id chains from


class BlobRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    size: int
    suffix: str


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    created_at: str
    branches: tuple[BranchRef, ...]
    blobs: dict[str, BlobRef]


class BundleInfo(msgspec.Struct, frozen=True):
    path: str
    branches: tuple[str, ...]
    events: int
    blobs: int
    bytes: int


class PullReport(msgspec.Struct, frozen=True):
    path: str
    created: tuple[str, ...]  # branches the store did not have
    extended: tuple[str, ...]  # branches it had, now longer
    unchanged: tuple[str, ...]  # branches it already held as the bundle has them (or further)
    events: int  # events appended
    blobs: int  # blobs added


def ordered(store: Store, names: Sequence[str]) -> list[BranchInfo]:
    """The branches, each after the bundled branch it forked from."""
    infos = {n: store.log.branch(n) for n in dict.fromkeys(names)}
    out: list[BranchInfo] = []
    seen: set[str] = set()

    def visit(info: BranchInfo) -> None:
        if info.name in seen:
            return
        seen.add(info.name)
        if info.base_branch in infos:
            visit(infos[info.base_branch])
        out.append(info)

    for info in infos.values():
        visit(info)
    return out


class _Bundle:
    """A bundle read and checked on its own (ids, parent links, payloads, blob hashes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile, ValueError) as e:
            raise BundleDamaged(self.path, f"not a readable bundle ({type(e).__name__}: {e})") from None
        try:
            self._check()
        except BaseException:
            self.zip.close()
            raise

    def _check(self) -> None:
        names = [i.filename for i in self.zip.infolist()]
        if len(set(names)) != len(names):
            raise BundleDamaged(self.path, "a member name appears twice")
        if "manifest.json" not in names:
            raise BundleDamaged(self.path, "it holds no manifest.json: not a bundle `sia bundle` wrote")
        self.manifest = self._manifest()
        if self.manifest.format != FORMAT:
            raise BundleDamaged(self.path, f"format {self.manifest.format!r}; this engine reads {FORMAT}")
        self._check_names()
        want = {"manifest.json", *(f"events/{i}.json" for i in range(len(self.manifest.branches))), *(f"blobs/{b}" for b in self.manifest.blobs)}
        if set(names) != want:
            raise BundleDamaged(self.path, f"members {sorted(set(names) ^ want)[:5]} are missing or unexpected")
        self.rows: dict[str, list[Row]] = {}
        self.starts: dict[str, int] = {}  # each branch's first bundled seq
        self.sealed: dict[str, Sealed | None] = {}
        self.events: dict[str, tuple[NewEvent, ...]] = {}  # each branch's rows as the log takes them, made once
        self.blobs_named: set[str] = set()
        for i, ref in enumerate(self.manifest.branches):
            self.starts[ref.name] = ref.start
            self.rows[ref.name] = self._branch(ref, self._rows(i))

    def _check_names(self) -> None:
        """Branch names the store accepts, each once; blob ids that are sha256 digests."""
        seen: set[str] = set()
        for ref in self.manifest.branches:
            try:
                for name in (ref.name, *(() if ref.base_branch is None else (ref.base_branch,))):
                    check_branch_name(name)
            except InvalidName as e:
                raise BundleDamaged(self.path, str(e)) from None
            if ref.name in seen:
                raise BundleDamaged(self.path, f"branch {ref.name!r} is listed twice")
            seen.add(ref.name)
        bad = [b for b in self.manifest.blobs if not _HEX64.fullmatch(b)]
        if bad:
            raise BundleDamaged(self.path, f"blob {bad[0][:80]!r} is not named by its sha256")

    def _manifest(self) -> Manifest:
        try:
            return msgspec.json.decode(self._read("manifest.json", MAX_MANIFEST), type=Manifest)
        except (msgspec.DecodeError, RecursionError) as e:
            raise BundleDamaged(self.path, f"manifest.json: {type(e).__name__}: {e}") from None

    def _rows(self, i: int) -> list[Row]:
        try:
            return msgspec.json.decode(self._read(f"events/{i}.json", MAX_EVENTS), type=list[Row])
        except (msgspec.DecodeError, RecursionError) as e:
            raise BundleDamaged(self.path, f"events/{i}.json: {type(e).__name__}: {e}") from None

    def _read(self, name: str, limit: int = MAX_MEMBER) -> bytes:
        info = self.zip.getinfo(name)
        if info.file_size > limit:
            raise BundleDamaged(self.path, f"{name} says it is {info.file_size:,} bytes, above the {limit:,} a bundle member may be")
        if info.file_size > 64 * (info.compress_size + 1) and info.file_size > 1 << 26:
            raise BundleDamaged(self.path, f"{name} expands {info.file_size // max(info.compress_size, 1):,} times (a compression bomb)")
        try:
            return self.zip.read(name)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError, zlib.error) as e:
            # a CRC or a length that does not hold, an encrypted or unknown compression: damage
            raise BundleDamaged(self.path, f"{name} cannot be read back whole ({type(e).__name__}: {e})") from None

    def close(self) -> None:
        self.zip.close()

    def _branch(self, ref: BranchRef, rows: list[Row]) -> list[Row]:
        """Each row's id recomputed after its parent; seqs, counts and the head as the manifest says."""
        if len(rows) != ref.events or ref.head_seq != ref.start + len(rows) - 1:
            raise BundleDamaged(self.path, f"branch {ref.name!r}: {len(rows)} events from #{ref.start}, the manifest says {ref.events} ending at #{ref.head_seq}")
        if (ref.base_branch is None) != (ref.base_id is None) or (ref.base_branch is None) != (ref.base_seq is None):
            raise BundleDamaged(self.path, f"branch {ref.name!r}: a fork point must name its branch, seq and event")
        if ref.start < 0 or (ref.start > 0) != (ref.after_id is not None) or (ref.after_id is not None and not _HEX64.fullmatch(ref.after_id)):
            raise BundleDamaged(self.path, f"branch {ref.name!r}: events from #{ref.start} must name the event before them (after_id), and only then")
        if any(row[0] != ref.start + k for k, row in enumerate(rows)):
            raise BundleDamaged(self.path, f"branch {ref.name!r}: its events' seqs are not {ref.start}, {ref.start + 1}, ...")
        first_parent = ref.after_id if ref.start > 0 else ref.base_id
        try:  # every id computed once, as the store computes it (the store writes this seal, it does not seal again)
            events = tuple(NewEvent(k, v, bytes(p)) for _, _, k, v, p in rows)
            sealed = seal(ref.name, first_parent, events, decoded=True) if rows else None  # each payload decoded as its event below
        except InvalidEnvelope as e:
            raise BundleDamaged(self.path, f"branch {ref.name!r}: {e}") from None
        if sealed is not None and sealed.ids != [r[1] for r in rows]:
            k = next(i for i, (got, r) in enumerate(zip(sealed.ids, rows, strict=True)) if got != r[1])
            raise BundleDamaged(self.path, f"{ref.name}#{ref.start + k}: its id does not follow from its parent and content (a changed or reordered event)")
        self.sealed[ref.name], self.events[ref.name] = sealed, events
        parent = sealed.ids[-1] if sealed is not None else first_parent
        for event in self._events(ref.name, rows, ref.start):
            self.blobs_named.update(event.blob_refs())
        if parent != ref.head_id:
            raise BundleDamaged(self.path, f"branch {ref.name!r}: its events end at {parent}, the manifest says {ref.head_id}")
        return rows

    def _events(self, branch: str, rows: list[Row], start: int = 0) -> list[Event]:
        """Every payload decoded as its kind: at today's schemas in one pass (a tagged union), an
        older one or one that fails event by event (the error names it). Each payload must be the
        canonical bytes of the event it decodes to (checked in one encode where all are)."""
        if all(EVENT_TYPES.get(kind) is not None and EVENT_TYPES[kind].SCHEMA == schema for _, _, kind, schema, _ in rows):
            joined = b"[" + b",".join(bytes(r[4]) for r in rows) + b"]"
            try:
                events = _ANY.decode(joined)
                if all(e.kind() == r[2] for e, r in zip(events, rows, strict=True)):
                    if canonical(events) != joined:
                        self._canonical(branch, rows, events, start)
                    return events
            except (msgspec.DecodeError, msgspec.ValidationError):
                pass  # found again below, with where it is
        out = []
        for k, (_, _, kind, schema, payload) in enumerate(rows):
            try:
                out.append(decode(kind, schema, bytes(payload), where=f"{branch}#{start + k}"))
            except EventError as e:
                raise BundleDamaged(self.path, str(e)) from None
            if out[-1].kind() != kind:
                raise BundleDamaged(self.path, f"{branch}#{start + k}: a {kind} whose payload says {out[-1].kind()}")
        self._canonical(branch, rows, out, start)
        return out

    def _canonical(self, branch: str, rows: list[Row], events: list[Event], start: int) -> None:
        """Payloads another JSON reader could read otherwise are damage: a key given twice (which
        one counts depends on the reader), NaN or infinity, a value other than the event's. A
        payload may lack fields its event has (a history recorded before a field was added)."""
        for k, ((_, _, kind, schema, raw), event) in enumerate(zip(rows, events, strict=True)):
            payload = bytes(raw)
            current = EVENT_TYPES[kind].SCHEMA == schema
            if current and canonical(event) == payload:
                continue
            why = noncanonical(payload, canonical(event) if current else None)
            if why is not None:
                raise BundleDamaged(self.path, f"{branch}#{start + k}: its payload {why}")

    def blob(self, blob_id: str) -> bytes:
        data = self._read(f"blobs/{blob_id}")
        if hashlib.sha256(data).hexdigest() != blob_id or len(data) != self.manifest.blobs[blob_id].size:
            raise BundleDamaged(self.path, f"blob {blob_id} does not hash to its name")
        return data


def read_bundle(path: str | os.PathLike[str]) -> Manifest:
    """The manifest of a bundle whose every event checks (``BundleDamaged`` otherwise)."""
    b = _Bundle(path)
    try:
        for blob in b.manifest.blobs:
            b.blob(blob)
        return b.manifest
    finally:
        b.close()


def _at(store: Store, bundle: _Bundle, branch: str, seq: int) -> str | None:
    """The id at ``branch#seq`` in the store, or in the bundle; None where neither has it."""
    try:
        return store.log.at(branch, seq).id
    except (EventNotFound, BranchNotFound):
        pass
    rows, start = bundle.rows.get(branch), bundle.starts.get(branch, 0)
    return rows[seq - start][1] if rows is not None and 0 <= seq - start < len(rows) else None


def _plan(store: Store, bundle: _Bundle) -> tuple[list[BranchImport], dict[str, str]]:
    """Each bundled branch against the store: what to create, what to append (and which state)."""
    have = {b.name: b for b in store.log.branches()}
    imports, fate = [], {}
    for ref in bundle.manifest.branches:
        rows = bundle.rows[ref.name]
        if ref.base_branch is not None:
            assert ref.base_seq is not None
            if ref.base_branch not in have and ref.base_branch not in bundle.rows:
                raise BundleRefused(ref.name, f"it forks from {ref.base_branch}#{ref.base_seq}, a branch this store does not have; pull that first")
            if _at(store, bundle, ref.base_branch, ref.base_seq) != ref.base_id:
                raise BundleRefused(ref.name, f"its fork point {ref.base_branch}#{ref.base_seq} is another event in this store")
        ours, start = have.get(ref.name), ref.start
        if ours is None:
            if start > 0:
                raise BundleRefused(ref.name, f"the bundle holds its events from #{start} on, and this store does not have the branch; pull its earlier events first")
            create = BranchInfo(ref.name, ref.base_branch, ref.base_seq, ref.base_id, -1, ref.base_id, datetime.now(UTC))
            imports.append(BranchImport(ref.name, ref.base_id, bundle.events[ref.name], create, sealed=bundle.sealed[ref.name]))
            fate[ref.name] = "created"
            continue
        if (ours.base_branch, ours.base_seq, ours.base_id) != (ref.base_branch, ref.base_seq, ref.base_id):
            raise BundleConflict(ref.name, -1, f"{ours.base_branch}#{ours.base_seq}", f"{ref.base_branch}#{ref.base_seq}",
                                 "it grew from another fork point here")
        if start > 0 and ours.head_seq < start - 1:
            raise BundleRefused(ref.name, f"the bundle holds its events from #{start} on, and this store has them up to #{ours.head_seq}; pull the events between first")
        if start > 0 and (mine := store.log.at(ref.name, start - 1).id) != ref.after_id:
            raise BundleConflict(ref.name, start - 1, mine, ref.after_id)  # the bundle's history holds another event there (or before)
        common = min(ours.head_seq, ref.head_seq)
        if common >= start and (mine := store.log.at(ref.name, common).id) != rows[common - start][1]:
            first = next(q for q in range(start, common + 1) if store.log.at(ref.name, q).id != rows[q - start][1])
            raise BundleConflict(ref.name, first, mine if first == common else store.log.at(ref.name, first).id, rows[first - start][1])
        if ours.head_seq >= ref.head_seq:
            fate[ref.name] = "unchanged"
            continue
        h, whole = ours.head_seq + 1 - start, bundle.sealed[ref.name]
        part = None if whole is None else Sealed(whole.ids[h:], whole.kinds[h:], whole.schemas[h:], whole.payloads[h:])  # ids chain: the tail's seal
        imports.append(BranchImport(ref.name, ours.head_id, bundle.events[ref.name][h:], sealed=part))
        fate[ref.name] = "extended"
    return imports, fate


def pull_bundle(store: Store, path: str | os.PathLike[str], *, only: Sequence[str] | None = None) -> PullReport:
    """Append a bundle's branches to ``store`` (see the module's docstring); ``only``: the
    branches it must hold, no other (an experiment's driver pulls an arm's own branch alone)."""
    bundle = _Bundle(path)
    try:
        names = [r.name for r in bundle.manifest.branches]
        if only is not None and sorted(names) != sorted(only):
            raise BundleRefused(names[0] if names else "-", f"the bundle holds {names}, where {list(only)} was expected")
        unnamed = sorted(set(bundle.manifest.blobs) - bundle.blobs_named)
        if unnamed:
            raise BundleDamaged(bundle.path, f"blob {unnamed[0]} is named by no bundled event (a bundle carries only what its events name)")
        missing = [b for b in bundle.blobs_named if b not in bundle.manifest.blobs and not store.blobs.exists(b)]
        if missing:
            raise BundleRefused("-", f"blob {missing[0]} is named by an event and is neither in the bundle nor in this store")
        imports, fate = _plan(store, bundle)
        # every blob re-hashed before any is written (a bundle that lies is damaged), one at a time (a blob's bytes in memory at once)
        for blob in bundle.manifest.blobs:
            bundle.blob(blob)
        new = [blob for blob in bundle.manifest.blobs if not store.blobs.exists(blob)]
        for blob in new:  # then blobs first, as a history records them: durable before any event names them
            try:
                store.blobs.put(bundle.blob(blob), suffix=bundle.manifest.blobs[blob].suffix if bundle.manifest.blobs[blob].suffix in SUFFIXES else "bin")
            except BlobError as e:
                raise BundleDamaged(bundle.path, str(e)) from None
        if imports:
            store.log.import_branches(imports)
    finally:
        bundle.close()
    names = [r.name for r in bundle.manifest.branches]
    return PullReport(bundle.path, tuple(n for n in names if fate[n] == "created"), tuple(n for n in names if fate[n] == "extended"),
                      tuple(n for n in names if fate[n] == "unchanged"), sum(len(i.events) for i in imports), len(new))
