"""Recording through History, rebuilding with snapshots, forking, and whole-store verification."""

from __future__ import annotations

from pathlib import Path

import duckdb
import msgspec
import numpy as np
import pytest

from sia_engine.domain.events import (
    AdapterCheckpointed,
    RunStarted,
    TrajectoryRecorded,
    VersionEvaluated,
)
from sia_engine.domain.history import DELTA_KEY, SNAPSHOT_KEY, History, fork, rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.scaffold import Scaffold
from sia_engine.domain.state import AgentState, state_hash, version_id
from sia_engine.errors import InvalidEvent, MissingBlob, ReducerError, SnapshotMismatch
from store import ConcurrencyError, DuckEventLog, MemoryEventLog, Store
from tests.conftest import FakeClock
from tests.strategies import BASE


def start(log, branch: str = "main", **kw) -> History:  # type: ignore[no-untyped-def]
    log.init_branch(branch)
    h = History.open(log, branch, **kw)
    h.record(RunStarted(run_id="r", task="t", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="0", levers=("scaffold", "weights")))
    return h


def traj(h: History, i: int) -> TrajectoryRecorded:
    assert h.state.head is not None
    return TrajectoryRecorded(trajectory_id=f"t{i}", episode_id=f"e{i}", split="train", version_id=h.state.head, output=str(i), score=i / 100)


@pytest.fixture(params=["memory", "duckdb"])
def log(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    lg = MemoryEventLog(clock=FakeClock()) if request.param == "memory" else DuckEventLog(tmp_path / "log.duckdb", clock=FakeClock())
    yield lg
    lg.close()


def test_recorded_state_equals_rebuilt_state(log) -> None:  # type: ignore[no-untyped-def]
    h = start(log, snapshot_every=7, full_every=14)
    for i in range(0, 40, 4):
        h.record(*(traj(h, j) for j in range(i, i + 4)))
    rebuilt, head = rebuild(log, "main")
    assert head == h.head and state_hash(rebuilt) == state_hash(h.state)
    assert [s[1] for s in log.list_snapshots(SNAPSHOT_KEY)] == [6, 20, 34]
    assert [s[1] for s in log.list_snapshots(DELTA_KEY)] == [13, 27]
    for seq in range(41):
        with_snap, _ = rebuild(log, "main", until_seq=seq, check=True)
        without, _ = rebuild(log, "main", until_seq=seq, use_snapshots=False)
        assert state_hash(with_snap) == state_hash(without)
        assert with_snap.n_events == seq + 1


def test_bad_events_never_reach_the_log(log) -> None:  # type: ignore[no-untyped-def]
    h = start(log)
    before = log.count()
    with pytest.raises(ReducerError):
        h.record(traj(h, 1), VersionEvaluated(version_id="f" * 64, split="val", score=1.0, n_episodes=1))
    with pytest.raises(InvalidEvent):
        h.record(traj(h, 1), VersionEvaluated(version_id=h.state.head, split="val", score=float("inf"), n_episodes=1))  # type: ignore[arg-type]
    assert log.count() == before and state_hash(h.state) == state_hash(rebuild(log, "main")[0])


def test_blob_must_exist_before_its_event(tmp_path: Path) -> None:
    with Store.create(tmp_path / "s") as s:
        s.log.init_branch("main")
        h = History.open(s.log, "main", blobs=s.blobs)
        h.record(RunStarted(run_id="r", task="t", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="0", levers=("weights",)))
        head = h.state.head
        assert head is not None
        missing = "c" * 64
        ev = AdapterCheckpointed(parent_version=head, version_id=version_id(BASE, Scaffold(), missing), blob=missing, peft_config={}, training_data=(), seed=0)
        with pytest.raises(MissingBlob) as exc:
            h.record(ev)
        assert str(exc.value) == (
            f"'adapter_checkpointed' event names blob {missing}, which is not in the store; put the blob first "
            "(a blob must be durable before the event that references it)"
        )
        blob = s.blobs.put_tensors({"lora_A": np.zeros((2, 2), np.float32)})
        h.record(AdapterCheckpointed(parent_version=head, version_id=version_id(BASE, Scaffold(), blob), blob=blob, peft_config={}, training_data=(), seed=0))
        assert verify_store(s.log, s.blobs).ok


def test_two_writers_on_one_branch_conflict(log) -> None:  # type: ignore[no-untyped-def]
    h1 = start(log)
    h2 = History.open(log, "main")
    h1.record(traj(h1, 1))
    with pytest.raises(ConcurrencyError):
        h2.record(traj(h2, 2))
    assert log.count() == 2


def test_fork_continues_from_the_fork_point(log) -> None:  # type: ignore[no-untyped-def]
    h = start(log, snapshot_every=3)
    h.record(*(traj(h, i) for i in range(6)))
    alt = fork(log, "alt", source="main", at_seq=3, reason="try")
    assert alt.state.forks == ("main#3",) and alt.state.n_events == 5
    alt.record(traj(alt, 100))
    h.record(traj(h, 7))
    assert state_hash(rebuild(log, "alt")[0]) == state_hash(alt.state)
    assert state_hash(rebuild(log, "alt", use_snapshots=False)[0]) == state_hash(alt.state)
    assert rebuild(log, "main")[0].n_events == 8
    fresh = log.fork("empty", source="main", at_seq=2)
    st, head = rebuild(log, "empty")
    assert head == fresh.base_id and st.n_events == 3


def test_fork_that_would_be_refused_creates_no_branch(log) -> None:  # type: ignore[no-untyped-def]
    from sia_engine.errors import UnknownEventKind
    from store import NewEvent

    log.init_branch("raw")
    log.append("raw", [NewEvent("not_an_engine_event", 1, b"{}")], expected_head=None)
    with pytest.raises(UnknownEventKind):
        fork(log, "x", source="raw", at_seq=0, reason="the history there is not an agent's")
    assert "x" not in [b.name for b in log.branches()]


def test_stale_snapshot_is_caught(tmp_path: Path) -> None:
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p) as log:
        h = start(log, snapshot_every=5)
        h.record(*(traj(h, i) for i in range(10)))
        good = state_hash(h.state)
    con = duckdb.connect(str(p))
    forged = msgspec.json.encode(AgentState(n_events=5))
    con.execute("UPDATE snapshots SET data = ? WHERE seq = 4", [forged])
    con.close()
    with DuckEventLog(p) as log:
        with pytest.raises(SnapshotMismatch) as exc:
            rebuild(log, "main", until_seq=6, check=True)
        assert str(exc.value).startswith("snapshot at main#4 has state hash ")
        report = verify_store(log)
        problems = [str(x) for x in report.problems]
        assert problems[0] == (
            f"main#4 ({log.at('main', 4).id}): cached snapshot has state hash {state_hash(AgentState(n_events=5))}, "
            f"a fresh reduce gives {state_hash(rebuild(log, 'main', until_seq=4, use_snapshots=False)[0])}"
        )
        # the delta at main#9 was written against the (then true) state at main#4: on the forged base it is wrong too
        assert len(problems) == 2 and problems[1].startswith(f"main#9 ({log.at('main', 9).id}): cached delta snapshot has state hash ")
        assert log.clear_snapshots() == 2
        assert state_hash(rebuild(log, "main")[0]) == good and verify_store(log).ok


def test_verify_store_finds_event_and_blob_problems(tmp_path: Path) -> None:
    with Store.create(tmp_path / "s") as s:
        h = start(s.log, blobs=s.blobs)
        blob = s.blobs.put_tensors({"w": np.ones(3, np.float32)})
        head = h.state.head
        assert head is not None
        h.record(AdapterCheckpointed(parent_version=head, version_id=version_id(BASE, Scaffold(), blob), blob=blob, peft_config={}, training_data=(), seed=0))
        assert verify_store(s.log, s.blobs).ok
    path = s.blobs.path(blob)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    with Store.open(tmp_path / "s") as s:
        report = verify_store(s.log, s.blobs)
        assert not report.ok and report.first is not None
        assert report.first.branch == "blobs" and report.first.event_id == blob
        assert f"blob {path} is corrupt" in report.first.reason
    path.unlink()
    with Store.open(tmp_path / "s") as s:
        report = verify_store(s.log, s.blobs)
        assert str(report.first) == f"main#1 ({s.log.at('main', 1).id}): references blob {blob}, which is not in the store"


def test_verify_store_finds_an_undecodable_event(tmp_path: Path) -> None:
    """An event appended with a valid hash but a payload the engine cannot read."""
    from store import NewEvent

    with Store.create(tmp_path / "s") as s:
        h = start(s.log)
        [eid] = s.log.append("main", [NewEvent("trajectory_recorded", 1, b'{"kind":"trajectory_recorded","oops":1}')], expected_head=h.head)
        report = verify_store(s.log, s.blobs)
        assert str(report.first).startswith(f"main#1 ({eid}): invalid 'trajectory_recorded' payload at main#1 ({eid}): ")


def test_delta_snapshots_hold_only_what_changed(tmp_path: Path) -> None:
    """A delta carries the versions new or changed since its base and the tails of the
    append-only tuples; applied to the base it is the full state, byte for byte."""
    from sia_engine.domain.canonical import canonical
    from sia_engine.domain.history import StateDelta, load_cached_state

    with DuckEventLog(tmp_path / "log.duckdb", clock=FakeClock()) as log:
        h = start(log, snapshot_every=4, full_every=100)
        for i in range(30):
            h.record(traj(h, i))
            if i % 6 == 5:  # a new scaffold version every few events: versions change between snapshots
                head = h.state.head_version
                assert head is not None
                sc = Scaffold(system_prompt=f"v{i}")
                vid = version_id(BASE, sc, None)
                from sia_engine.domain.events import ScaffoldPatched, VersionAccepted
                from sia_engine.domain.scaffold import PatchOp, scaffold_hash
                h.record(ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=(PatchOp("replace", "/system_prompt", f"v{i}"),),
                                         scaffold_hash=scaffold_hash(sc)),
                         VersionEvaluated(version_id=vid, split="val", score=0.5, n_episodes=1),
                         VersionAccepted(version_id=vid, previous=head.version_id, score=0.5, previous_score=None, margin=0.0))
        deltas = log.list_snapshots(DELTA_KEY)
        assert deltas and len(log.list_snapshots(SNAPSHOT_KEY)) == 1
        for b, seq, _ in deltas:
            found = log.load_snapshot(b, seq, DELTA_KEY)
            assert found is not None
            d = msgspec.json.decode(found[3], type=StateDelta)
            full = rebuild(log, "main", until_seq=seq, use_snapshots=False)[0]
            assert len(d.state.versions) < len(full.versions)
            cached = load_cached_state(log, b, seq, DELTA_KEY)
            assert cached is not None and canonical(cached) == canonical(full)
        assert verify_store(log).ok


def test_damaged_snapshot_file_is_reported_and_ignored(tmp_path: Path) -> None:
    """Snapshot bytes live in files beside the database; one altered or removed is no snapshot
    (rebuild reduces from the events instead) and verify names it."""
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p, clock=FakeClock()) as log:
        h = start(log, snapshot_every=5)
        h.record(*(traj(h, i) for i in range(12)))
        good = state_hash(h.state)
    assert len(list((tmp_path / "log.duckdb.snapshots").iterdir())) == 2
    con = duckdb.connect(str(p), read_only=True)
    [(ref,)] = con.execute("SELECT data FROM snapshots WHERE seq = 4").fetchall()
    con.close()
    assert ref.startswith(b"sha256:")  # the row names the file; the bytes are not in DuckDB
    full = tmp_path / "log.duckdb.snapshots" / ref[7:].decode()
    raw = full.read_bytes()
    full.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))  # one bit of the file (a zstd frame or plain JSON)
    with DuckEventLog(p, clock=FakeClock()) as log:
        assert state_hash(rebuild(log, "main", check=True)[0]) == good
        report = verify_store(log)
        assert not report.ok and all("unreadable" in x.reason for x in report.problems)
        assert {x.seq for x in report.problems} == {4, 9}  # the full one, and the delta written on it
        assert log.clear_snapshots() == 2 and not any((tmp_path / "log.duckdb.snapshots").iterdir())
        assert verify_store(log).ok


def test_history_fork_uses_the_state_in_memory(log) -> None:  # type: ignore[no-untyped-def]
    h = start(log, snapshot_every=3)
    h.record(*(traj(h, i) for i in range(7)))
    alt = h.fork("alt", reason="arm", overrides={"levers": ["scaffold"]})
    assert alt.state.forks == (f"main#{h.head_seq}",) and alt.state.n_events == h.state.n_events + 1
    alt.record(traj(alt, 50))
    assert state_hash(rebuild(log, "alt")[0]) == state_hash(alt.state)
    assert state_hash(rebuild(log, "alt", use_snapshots=False)[0]) == state_hash(alt.state)
    with pytest.raises(ReducerError):
        History(log, "main", AgentState(), None).fork("never", reason="empty")
    assert "never" not in [b.name for b in log.branches()]


def test_growing_scaffolds_are_cached_in_a_shared_form(tmp_path: Path) -> None:
    """A scaffold gaining one example per version: the state holds every version's scaffold
    (quadratic); the cached form holds each example once and rebuilds the same state."""
    from sia_engine.domain.events import ScaffoldPatched, VersionAccepted
    from sia_engine.domain.history import decode_state, encode_cached
    from sia_engine.domain.scaffold import PatchOp, apply_patch, scaffold_hash

    with DuckEventLog(tmp_path / "log.duckdb", clock=FakeClock()) as log:
        h = start(log, snapshot_every=60, full_every=180)
        for i in range(120):
            head = h.state.head_version
            assert head is not None
            ops = (PatchOp("add", "/examples/-", {"input": f"question {i} " + "x" * 200, "output": "theft"}),)
            sc = apply_patch(head.scaffold, ops)
            vid = version_id(BASE, sc, None)
            h.record(ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(sc)),
                     VersionEvaluated(version_id=vid, split="val", score=0.5, n_episodes=1),
                     VersionAccepted(version_id=vid, previous=head.version_id, score=0.5, previous_score=None, margin=0.0))
        plain, shared = canonical_len(h.state), len(encode_cached(h.state))
        assert shared * 10 < plain, (shared, plain)
        assert state_hash(decode_state(encode_cached(h.state))) == state_hash(h.state)
        for seq in (59, 179, 239, 359):
            assert state_hash(rebuild(log, "main", until_seq=seq, check=True)[0]) == state_hash(rebuild(log, "main", until_seq=seq, use_snapshots=False)[0])
        assert verify_store(log).ok


def canonical_len(state: AgentState) -> int:
    from sia_engine.domain.canonical import canonical

    return len(canonical(state))
