"""``History``: one branch of a log seen as domain events, with its reduced state.

Recording goes through here: each event is encoded, decoded back, applied to the state (so an
event the reducer rejects never reaches the log), its blobs are checked to be in the store, and
the batch is appended under compare-and-swap on the branch head. Rebuilding reads the log, from
the latest snapshot when one is cached; snapshots are checked against a fresh reduce on demand.
"""

from __future__ import annotations


import msgspec

from sia_engine.domain.cached import StateDelta, decode_delta, decode_state, encode_cached
from sia_engine.domain.events import BranchForked, Event, decode_envelope, roundtrip
from sia_engine.domain.state import REDUCER_VERSION, AgentState, apply, state_hash
from sia_engine.errors import MissingBlob, ReducerError, SnapshotMismatch
from store import BlobStore, EventLog, NewEvent

__all__ = ["History", "rebuild", "fork", "decode_state", "encode_cached", "SNAPSHOT_KEY", "DELTA_KEY", "StateDelta", "load_cached_state"]

SNAPSHOT_KEY = f"agent-state/{REDUCER_VERSION}"
DELTA_KEY = f"agent-state-delta/{REDUCER_VERSION}"


class _Snap(msgspec.Struct, frozen=True):
    branch: str
    seq: int
    event: str
    state: AgentState


def _make_delta(base: _Snap, state: AgentState) -> StateDelta | None:
    """``state`` as a delta on ``base``, or None where it is not an extension of it."""
    b = base.state
    nh, nf = len(b.head_history), len(b.forks)
    if state.head_history[:nh] != b.head_history or state.forks[:nf] != b.forks:
        return None
    if not b.versions.keys() <= state.versions.keys():
        return None
    changed = {k: v for k, v in state.versions.items() if (old := b.versions.get(k)) is not v and old != v}
    part = msgspec.structs.replace(state, versions=changed, head_history=state.head_history[nh:], forks=state.forks[nf:])
    return StateDelta(base.branch, base.seq, base.event, part)


def _apply_delta(base: AgentState, delta: StateDelta) -> AgentState:
    p = delta.state
    return msgspec.structs.replace(
        p, versions={**base.versions, **p.versions}, head_history=base.head_history + p.head_history, forks=base.forks + p.forks
    )


def _load(log: EventLog, branch: str, until_seq: int) -> tuple[_Snap | None, _Snap | None]:
    """(the latest full snapshot, the latest cached state) on the history of ``branch#until_seq``:
    the second is a delta applied to the first where a later delta on it is cached."""
    found = log.load_snapshots(branch, until_seq, [SNAPSHOT_KEY, DELTA_KEY])
    full, delta = found.get(SNAPSHOT_KEY), found.get(DELTA_KEY)
    base = None if full is None else _Snap(full[0], full[1], full[2], decode_state(full[3]))
    if delta is None or base is None:
        return base, base
    order = {b: i for i, (b, _) in enumerate(log.segments(branch, until_seq))}
    if (order[delta[0]], delta[1]) <= (order[base.branch], base.seq):
        return base, base
    d = decode_delta(delta[3])
    if (d.base_branch, d.base_seq, d.base_event) != (base.branch, base.seq, base.event):
        return base, base  # a delta on an older base than the latest full one: the full one is nearer
    return base, _Snap(delta[0], delta[1], delta[2], _apply_delta(base.state, d))


def load_cached_state(
    log: EventLog, branch: str, seq: int, key: str, bases: dict[tuple[str, int, str], AgentState | None] | None = None
) -> AgentState | None:
    """The state cached at exactly ``branch#seq`` under ``key`` (a full snapshot or a delta, which
    is applied to its base), or None where nothing usable is cached there. For verification:
    ``bases`` keeps the full states already decoded, which many deltas share."""
    found = log.load_snapshot(branch, seq, key)
    if found is None or found[:2] != (branch, seq):
        return None
    if key == SNAPSHOT_KEY:
        return decode_state(found[3])
    d = decode_delta(found[3])
    where = (d.base_branch, d.base_seq, d.base_event)
    bases = {} if bases is None else bases
    if where not in bases:
        base = log.load_snapshot(d.base_branch, d.base_seq, SNAPSHOT_KEY)
        bases[where] = None if base is None or base[:3] != where else decode_state(base[3])
    base_state = bases[where]
    return None if base_state is None else _apply_delta(base_state, d)


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
    state, head, _ = _rebuild(log, branch, until_seq, use_snapshots, check)
    return state, head


def _rebuild(
    log: EventLog, branch: str, until_seq: int | None, use_snapshots: bool, check: bool
) -> tuple[AgentState, str | None, _Snap | None]:
    """As ``rebuild``, with the full snapshot it started from (the base of later deltas)."""
    info = log.branch(branch)
    if until_seq is None:
        until_seq = info.head_seq
    if until_seq < 0:  # a fresh fork or an empty root: the history is the ancestry alone
        if info.base_branch is None:
            return AgentState(), None, None
        assert info.base_seq is not None
        return _rebuild(log, info.base_branch, info.base_seq, use_snapshots, check)
    base, snap = _load(log, branch, until_seq) if use_snapshots else (None, None)
    if snap is None:
        state, head = _fresh(log, branch, until_seq)
        return state, head, None
    state = snap.state
    if check:
        fresh, _ = _fresh(log, snap.branch, snap.seq)
        if state_hash(fresh) != state_hash(state):
            raise SnapshotMismatch(f"{snap.branch}#{snap.seq}", state_hash(state), state_hash(fresh))
    head_id: str | None = snap.event
    # Replay what follows the snapshot: the rest of its segment, then each later segment.
    segs = log.segments(branch, until_seq)
    start = next(i for i, (b, _) in enumerate(segs) if b == snap.branch)
    after = snap.seq
    for b, hi in segs[start:]:
        for env in log.read(b, until_seq=hi, after_seq=after):
            state = apply(state, decode_envelope(env))
            head_id = env.id
        after = -1
    return state, head_id, base


class History:
    """A branch opened for recording. ``History.open(log, branch)`` rebuilds its state.

    Every ``snapshot_every`` events the state is cached: in full when ``full_every`` events have
    passed since the last full snapshot (or none is known), else as a ``StateDelta`` on it."""

    def __init__(
        self,
        log: EventLog,
        branch: str,
        state: AgentState,
        head: str | None,
        *,
        blobs: BlobStore | None = None,
        snapshot_every: int = 250,
        full_every: int = 5000,
        _base: _Snap | None = None,
    ) -> None:
        self.log = log
        self.branch = branch
        self.state = state
        self.head = head
        self.blobs = blobs
        self.snapshot_every = snapshot_every
        self.full_every = full_every
        self._base = _base  # the full snapshot later deltas are written against
        self.head_seq = log.branch(branch).head_seq  # seq of the branch's own last event, kept as we append

    @classmethod
    def open(
        cls,
        log: EventLog,
        branch: str,
        *,
        blobs: BlobStore | None = None,
        snapshot_every: int = 250,
        full_every: int = 5000,
    ) -> History:
        state, head, base = _rebuild(log, branch, None, True, False)
        return cls(log, branch, state, head, blobs=blobs, snapshot_every=snapshot_every, full_every=full_every, _base=base)

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
        # each payload was decoded back into its event above: the log need not parse it again
        ids = self.log.append(self.branch, batch, expected_head=self.head, decoded=True)
        first_seq = self.head_seq + 1
        self.state, self.head, self.head_seq = state, ids[-1], self.head_seq + len(ids)
        for i, snap in to_snapshot:
            self._snapshot(first_seq + i, ids[i], snap)
        return ids

    def _snapshot(self, seq: int, event_id: str, state: AgentState) -> None:
        base = self._base
        delta = None
        if base is not None and state.n_events - base.state.n_events < self.full_every:
            delta = _make_delta(base, state)
        if delta is None:
            self.log.save_snapshot(self.branch, seq, SNAPSHOT_KEY, encode_cached(state), event_id=event_id)
            self._base = _Snap(self.branch, seq, event_id, state)
        else:
            self.log.save_snapshot(self.branch, seq, DELTA_KEY, encode_cached(delta), event_id=event_id)

    def fork(self, name: str, *, reason: str, overrides: dict[str, object] | None = None) -> History:
        """A new branch growing from this history's head, from the state held in memory: no
        rebuild, so its cost does not grow with the history (``fork`` rebuilds any other seq)."""
        if self.head is None:
            raise ReducerError("branch_forked", f"branch {self.branch!r} has no events to fork from")
        return _fork_from(
            self.log, name, self.branch, self.head_seq, self.state, self.head, reason, overrides, self.blobs, self._base,
            self.snapshot_every, self.full_every,
        )


def _fork_from(
    log: EventLog,
    name: str,
    source: str,
    at_seq: int,
    state: AgentState,
    base_id: str,
    reason: str,
    overrides: dict[str, object] | None,
    blobs: BlobStore | None,
    base: _Snap | None,
    snapshot_every: int = 250,
    full_every: int = 5000,
) -> History:
    event = BranchForked(
        source_branch=source, source_seq=at_seq, source_event=base_id, reason=reason, overrides=dict(overrides or {})
    )
    apply(state, roundtrip(event)[1])  # refuse before creating the ref if the event would be refused
    log.fork(name, source=source, at_seq=at_seq)
    hist = History(log, name, state, base_id, blobs=blobs, snapshot_every=snapshot_every, full_every=full_every, _base=base)
    hist.record(event)
    return hist


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
    state, base_id, base = _rebuild(log, source, at_seq, True, False)
    assert base_id is not None
    return _fork_from(log, name, source, at_seq, state, base_id, reason, overrides, blobs, base)
