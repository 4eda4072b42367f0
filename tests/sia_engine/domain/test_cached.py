"""Issue 24, Deliver 2: snapshots sized for small histories. The chained form of growing
scaffolds, zstd frames on disk, and what an earlier engine wrote still read."""

from __future__ import annotations

from pathlib import Path

import duckdb
import msgspec
import zstandard

from sia_engine.domain.cached import StateDelta, decode_delta, decode_state, encode_cached
from sia_engine.domain.canonical import canonical
from sia_engine.domain.events import ScaffoldPatched, VersionAccepted, VersionEvaluated, VersionRejected
from sia_engine.domain.history import SNAPSHOT_KEY, History, rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.scaffold import PatchOp, apply_patch, scaffold_hash
from sia_engine.domain.state import state_hash, version_id
from store import DuckEventLog
from tests.conftest import FakeClock
from tests.sia_engine.domain.test_history import start
from tests.strategies import BASE


def _patch(h: History, ops: tuple[PatchOp, ...], accept: bool = True) -> None:
    head = h.state.head_version
    assert head is not None
    sc = apply_patch(head.scaffold, ops)
    vid = version_id(BASE, sc, None)
    verdict = (VersionAccepted(version_id=vid, previous=head.version_id, score=0.5, previous_score=None, margin=0.0) if accept
               else VersionRejected(version_id=vid, head=head.version_id, score=0.1, head_score=0.5, reason="worse"))
    h.record(ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(sc)),
             VersionEvaluated(version_id=vid, split="val", score=0.5, n_episodes=1), verdict)


def _example(i: int) -> PatchOp:
    return PatchOp("add", "/examples/-", {"input": f"question {i} " + "x" * 200, "output": "theft"})


def test_chained_form_rebuilds_every_kind_of_scaffold_history(tmp_path: Path) -> None:
    """Examples appended, a rejected sibling, an example replaced at the front, the prompt
    changed: the chained form (and a delta in it) decodes to the same state, byte for byte."""
    with DuckEventLog(tmp_path / "log.duckdb", clock=FakeClock()) as log:
        h = start(log, snapshot_every=0)
        for i in range(40):
            _patch(h, (_example(i),), accept=i % 7 != 3)
            if i == 20:
                _patch(h, (PatchOp("replace", "/examples/0", {"input": "changed", "output": "fraud"}),))
            if i == 30:
                _patch(h, (PatchOp("replace", "/system_prompt", "be brief"),))
        data = encode_cached(h.state)
        assert data[:1] == b"C" and len(data) * 5 < len(canonical(h.state))
        assert canonical(decode_state(data)) == canonical(h.state)
        half = msgspec.structs.replace(h.state, versions=dict(list(h.state.versions.items())[25:]))
        d = StateDelta("main", 3, "e" * 64, half)
        assert canonical(decode_delta(encode_cached(d))) == canonical(d)
        head = h.state.head_version
        assert head is not None
        parent = h.state.versions[head.parent or ""]
        assert head.scaffold.examples[0] is parent.scaffold.examples[0]  # one object, shared from version to version


def _grown(tmp_path: Path) -> tuple[Path, str]:
    """A log of 30 growing scaffolds, one full snapshot at its end: its path and state hash."""
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p, clock=FakeClock()) as log:
        h = start(log, snapshot_every=30, full_every=10_000)
        for i in range(30):
            _patch(h, (_example(i),))
        return p, state_hash(h.state)


def test_snapshot_files_are_zstd_frames_and_plain_files_still_read(tmp_path: Path) -> None:
    p, good = _grown(tmp_path)
    folder = tmp_path / "log.duckdb.snapshots"
    files = sorted(folder.iterdir())
    assert files and all(f.read_bytes()[:4] == b"\x28\xb5\x2f\xfd" for f in files)
    # an earlier engine's file: the bytes as they are, named by their hash
    con = duckdb.connect(str(p))
    [(seq, ref)] = con.execute("SELECT seq, data FROM snapshots WHERE key = ?", [SNAPSHOT_KEY]).fetchall()[:1]
    frame = (folder / ref[7:].decode()).read_bytes()
    plain = zstandard.ZstdDecompressor().decompress(frame)
    import hashlib

    digest = hashlib.sha256(plain).hexdigest()
    (folder / digest).write_bytes(plain)
    con.execute("UPDATE snapshots SET data = ? WHERE seq = ? AND key = ?", [b"sha256:" + digest.encode(), seq, SNAPSHOT_KEY])
    con.close()
    with DuckEventLog(p, clock=FakeClock()) as log:
        assert state_hash(rebuild(log, "main", check=True)[0]) == good
        assert log.load_snapshot("main", None, SNAPSHOT_KEY) is not None
        assert verify_store(log).ok


def test_a_frame_that_claims_to_inflate_past_the_limit_is_no_snapshot(tmp_path: Path) -> None:
    """A snapshot file that decompresses to 5 GiB (rewritten with its row, as an attacker with
    the store's files could) is never inflated: rebuild reduces from the events, verify names it."""
    import hashlib

    p, good = _grown(tmp_path)
    # a frame header (single segment, an 8-byte content size) claiming 5 GiB, then one empty last block
    bomb = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + (5 << 30).to_bytes(8, "little") + b"\x01\x00\x00"
    assert zstandard.frame_content_size(bomb) == 5 << 30
    digest = hashlib.sha256(bomb).hexdigest()
    (tmp_path / "log.duckdb.snapshots" / digest).write_bytes(bomb)
    con = duckdb.connect(str(p))
    con.execute("UPDATE snapshots SET data = ?", [b"sha256:" + digest.encode()])
    con.close()
    with DuckEventLog(p, clock=FakeClock()) as log:
        assert state_hash(rebuild(log, "main")[0]) == good
        report = verify_store(log)
        assert not report.ok and all("unreadable" in x.reason for x in report.problems)


def test_a_chained_document_that_builds_quadratic_memory_is_refused() -> None:
    """Few bytes claiming many references: one scaffold of 40,000 examples and 5,000 entries
    chained on it (1.2 MB) would build 200M references (1.5 GB); refused as damage, as are an
    entry chained on a later one and a document nested past the stack."""
    import pytest

    ex = {"input": "q", "output": "a"}
    many = [{"system_prompt": "", "examples": [ex] * 40_000}] + [{"base": 0, "add": [ex]}] * 5_000
    doc = b"C" + msgspec.json.encode({"scaffolds": many, "obj": {}})
    with pytest.raises(msgspec.ValidationError, match="more example references"):
        decode_state(doc)
    ahead = b"C" + msgspec.json.encode({"scaffolds": [{"base": 1, "add": []}, {}], "obj": {}})
    with pytest.raises(msgspec.ValidationError, match="not an earlier scaffold"):
        decode_state(ahead)
    with pytest.raises(msgspec.ValidationError):
        decode_state(b"C" + b"[" * 100_000 + b"]" * 100_000)
