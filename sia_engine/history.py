"""``History``: one branch of a log seen as domain events, with its reduced state.

Recording goes through here: each event is encoded, decoded back, applied to the state (so an
event the reducer rejects never reaches the log), its blobs are checked to be in the store, and
the batch is appended under compare-and-swap on the branch head. Rebuilding reads the log, from
the latest snapshot when one is cached; snapshots are checked against a fresh reduce on demand.
"""

from __future__ import annotations

import msgspec

from sia_engine.canonical import canonical
from sia_engine.errors import MissingBlob, SnapshotMismatch
from sia_engine.events import BranchForked, Event, decode_envelope, roundtrip
from sia_engine.state import REDUCER_VERSION, AgentState, apply, state_hash
from store import BlobStore, EventLog, NewEvent

__all__ = ["History", "rebuild", "fork", "decode_state", "SNAPSHOT_KEY"]

SNAPSHOT_KEY = f"agent-state/{REDUCER_VERSION}"
_STATE_DECODER = msgspec.json.Decoder(AgentState)


def decode_state(data: bytes) -> AgentState:
    """A snapshot's bytes back into the state they cache."""
    return _STATE_DECODER.decode(data)


def _fresh(log: EventLog, branch: str, until_seq: int | None) -> tuple[AgentState, str | None]:
    state = AgentState()
    head: str | None = None
    for env in log.iter_read(branch, until_seq=until_seq):
        state = apply(state, decode_envelope(env))
        head = env.id
    if head is None:
        head = log.branch(branch).base_id
    return state, head


def rebuild(
    log: EventLog, branch: str, *, until_seq: int | None = None, use_snapshots: bool = True, check: bool = False
) -> tuple[AgentState, str | None]:
    """The state of ``branch`` after its event ``until_seq`` (its head when None), and the id of
    the last event applied. With ``check``, a snapshot used is compared with a fresh reduce."""
    info = log.branch(branch)
    if until_seq is None:
        until_seq = info.head_seq
    if until_seq < 0:  # a fresh fork or an empty root: the history is the ancestry alone
        if info.base_branch is None:
            return AgentState(), None
        assert info.base_seq is not None
        return rebuild(log, info.base_branch, until_seq=info.base_seq, use_snapshots=use_snapshots, check=check)
    snap = log.load_snapshot(branch, until_seq, SNAPSHOT_KEY) if use_snapshots else None
    if snap is None:
        return _fresh(log, branch, until_seq)
    snap_branch, snap_seq, snap_id, data = snap
    state = decode_state(data)
    if check:
        fresh, _ = _fresh(log, snap_branch, snap_seq)
        if state_hash(fresh) != state_hash(state):
            raise SnapshotMismatch(f"{snap_branch}#{snap_seq}", state_hash(state), state_hash(fresh))
    head: str | None = snap_id
    # Replay what follows the snapshot: the rest of its segment, then each later segment.
    segs = log.segments(branch, until_seq)
    start = next(i for i, (b, _) in enumerate(segs) if b == snap_branch)
    after = snap_seq
    for b, hi in segs[start:]:
        for env in log.read(b, until_seq=hi, after_seq=after):
            state = apply(state, decode_envelope(env))
            head = env.id
        after = -1
    return state, head



class History:
    """A branch opened for recording. ``History.open(log, branch)`` rebuilds its state."""

    def __init__(
        self,
        log: EventLog,
        branch: str,
        state: AgentState,
        head: str | None,
        *,
        blobs: BlobStore | None = None,
        snapshot_every: int = 5000,
    ) -> None:
        self.log = log
        self.branch = branch
        self.state = state
        self.head = head
        self.blobs = blobs
        self.snapshot_every = snapshot_every
        self.head_seq = log.branch(branch).head_seq  # seq of the branch's own last event, kept as we append

    @classmethod
    def open(
        cls, log: EventLog, branch: str, *, blobs: BlobStore | None = None, snapshot_every: int = 5000
    ) -> History:
        state, head = rebuild(log, branch)
        return cls(log, branch, state, head, blobs=blobs, snapshot_every=snapshot_every)

    def record(self, *events: Event) -> list[str]:
        """Append ``events`` as one atomic batch; returns their ids. Nothing is written if any
        event is invalid, contradicts the history, names a missing blob, or the head moved."""
        state = self.state
        batch: list[NewEvent] = []
        to_snapshot: list[tuple[int, AgentState]] = []
        for i, ev in enumerate(events):
            new, canonical_ev = roundtrip(ev)
            for blob_id in canonical_ev.blob_refs():
                if self.blobs is None or not self.blobs.exists(blob_id):
                    raise MissingBlob(blob_id, new.kind)
            state = apply(state, canonical_ev)
            batch.append(new)
            if self.snapshot_every and state.n_events % self.snapshot_every == 0:
                to_snapshot.append((i, state))
        if not batch:
            return []
        ids = self.log.append(self.branch, batch, expected_head=self.head)
        first_seq = self.head_seq + 1
        self.state, self.head, self.head_seq = state, ids[-1], self.head_seq + len(ids)
        for i, snap in to_snapshot:
            self.log.save_snapshot(self.branch, first_seq + i, SNAPSHOT_KEY, canonical(snap))
        return ids


def fork(
    log: EventLog,
    name: str,
    *,
    source: str,
    at_seq: int,
    reason: str,
    overrides: dict[str, object] | None = None,
    blobs: BlobStore | None = None,
) -> History:
    """A new branch growing from ``source#at_seq``, opened with a ``branch_forked`` event."""
    state, base_id = rebuild(log, source, until_seq=at_seq)
    assert base_id is not None
    event = BranchForked(
        source_branch=source, source_seq=at_seq, source_event=base_id, reason=reason, overrides=dict(overrides or {})
    )
    apply(state, roundtrip(event)[1])  # refuse before creating the ref if the event would be refused
    log.fork(name, source=source, at_seq=at_seq)
    hist = History(log, name, state, base_id, blobs=blobs)
    hist.record(event)
    return hist
