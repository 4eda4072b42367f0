"""Bundles: branches moved between stores as one self-verifying file; a pull checks everything
before it appends anything, is idempotent and atomic."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_engine.domain.bundle import pull_bundle, read_bundle
from sia_engine.domain.bundle_write import write_bundle
from sia_engine.errors import BundleConflict, BundleDamaged, BundleRefused, WriteRefused
from replay.recorded import replay_recorded
from sia_engine.cli.main import main
from sia_engine.domain.history import fork
from sia_engine.domain.integrity import verify_store
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from store import NewEvent, Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong

ROOT = Path(__file__).resolve().parents[2]


def run(path: Path, iterations: int, branch: str = "main", seed: int = 0) -> None:
    with Store.open(path) if path.exists() else Store.create(path) as s:
        cfg = LoopConfig(task="arith", iterations=iterations, train_episodes=4, val_episodes=4, samples=2, levers=("weights", "scaffold"), seed=seed)
        Loop(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy(), config=cfg, branch=branch).run()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with main (adapters: blobs) and a fork of it, what-if, run further."""
    path = tmp_path_factory.mktemp("bundle") / "a"
    run(path, 2)
    with Store.open(path) as s:
        fork(s.log, "what-if", source="main", at_seq=s.log.branch("main").head_seq, reason="test", blobs=s.blobs)
    run(path, 3, branch="what-if")
    return path


def heads(path: Path) -> dict[str, tuple[int, str | None, str | None]]:
    with Store.open(path, read_only=True) as s:
        return {b.name: (b.head_seq, b.head_id, b.base_id) for b in s.log.branches()}


def test_a_round_trip_gives_the_same_history_event_for_event(source: Path, tmp_path: Path) -> None:
    with Store.open(source, read_only=True) as s:
        info = write_bundle(s, ["what-if", "main"], tmp_path / "x.bundle")
        blobs = {b for b in s.blobs.ids()}
    assert info.branches == ("main", "what-if") and info.blobs >= 1  # bases first
    assert [b.name for b in read_bundle(tmp_path / "x.bundle").branches] == ["main", "what-if"]
    with Store.create(tmp_path / "b") as b:
        r = pull_bundle(b, tmp_path / "x.bundle")
        assert r.created == ("main", "what-if") and r.events == info.events and r.blobs == info.blobs
        assert verify_store(b.log, b.blobs).ok and set(b.blobs.ids()) <= blobs
        with Store.open(source, read_only=True) as s:
            assert [e.id for e in b.log.read("what-if")] == [e.id for e in s.log.read("what-if")]
        assert replay_recorded(b, "what-if", TASK).adapters >= 1  # it replays there, adapters and all
    assert heads(tmp_path / "b") == heads(source)


def test_pulling_twice_changes_nothing_and_a_longer_bundle_extends(source: Path, tmp_path: Path) -> None:
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "one.bundle")
    with Store.create(tmp_path / "b") as b:
        pull_bundle(b, tmp_path / "one.bundle")
        n = b.log.count()
        again = pull_bundle(b, tmp_path / "one.bundle")
        assert again.unchanged == ("main",) and again.events == 0 and again.blobs == 0 and b.log.count() == n
    copy = tmp_path / "a2"
    subprocess.run(["cp", "-a", str(source), str(copy)], check=True)
    run(copy, 3)  # main goes on in the source
    with Store.open(copy, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "two.bundle")
    with Store.open(tmp_path / "b") as b:
        r = pull_bundle(b, tmp_path / "two.bundle")
        assert r.extended == ("main",) and r.events > 0
    assert heads(tmp_path / "b")["main"] == heads(copy)["main"]


def test_a_bundle_since_a_seq_carries_only_what_grew_and_extends_where_the_rest_is_held(source: Path, tmp_path: Path) -> None:
    """An experiment's worker sends its branch back after every iteration: what it grew, not all
    of it again. A store that lacks the events before, or holds others there, refuses it."""
    with Store.open(source, read_only=True) as s:
        head = s.log.branch("what-if").head_seq
        cut = head // 2
        write_bundle(s, ["main", "what-if"], tmp_path / "first.bundle", since={})
        full = write_bundle(s, ["what-if"], tmp_path / "whole.bundle")
        tail = write_bundle(s, ["what-if"], tmp_path / "tail.bundle", since={"what-if": cut})
        ids = [e.id for e in s.log.read("what-if", after_seq=-1)]
    assert tail.events == head - cut and tail.events < full.events
    [ref] = read_bundle(tmp_path / "tail.bundle").branches
    assert (ref.start, ref.after_id, ref.head_seq) == (cut + 1, ids[cut], head)
    with Store.create(tmp_path / "b") as b:  # nothing of what-if here: refused, nothing appended
        pull_bundle(b, tmp_path / "first.bundle")
    with Store.create(tmp_path / "c") as c:
        with Store.open(source, read_only=True) as s:
            write_bundle(s, ["main"], tmp_path / "main.bundle")
        pull_bundle(c, tmp_path / "main.bundle")
        with pytest.raises(BundleRefused, match="pull its earlier events first"):
            pull_bundle(c, tmp_path / "tail.bundle")
        assert [b.name for b in c.log.branches()] == ["main"]
    with Store.open(tmp_path / "b") as b:
        r = pull_bundle(b, tmp_path / "tail.bundle")
        assert r.unchanged == ("what-if",) and r.events == 0  # it held all of it already
        assert [e.id for e in b.log.read("what-if", after_seq=-1)] == ids
    # a store holding only what-if's first part takes the tail; one holding another event at the cut refuses it
    with Store.open(source, read_only=True) as s:
        first = s.log.read("what-if", after_seq=-1)[: cut + 1]
        at_seq = s.log.branch("what-if").base_seq
    for name, events, ok in (("e", first, True), ("f", [*first[:cut], first[cut - 1]], False)):
        with Store.create(tmp_path / name) as e:
            pull_bundle(e, tmp_path / "main.bundle")
            e.log.fork("what-if", source="main", at_seq=at_seq)  # the log's own fork: no event of its own
            e.log.append("what-if", [NewEvent(x.kind, x.schema, x.payload) for x in events], expected_head=e.log.branch("what-if").head_id)
            if ok:
                r = pull_bundle(e, tmp_path / "tail.bundle")
                assert r.extended == ("what-if",) and r.events == head - cut
                assert [x.id for x in e.log.read("what-if", after_seq=-1)] == ids and verify_store(e.log, e.blobs).ok
                continue
            n = e.log.count()
            with pytest.raises(BundleConflict) as exc:
                pull_bundle(e, tmp_path / "tail.bundle")
            assert exc.value.branch == "what-if" and exc.value.seq == cut and e.log.count() == n


def test_a_branch_that_differs_is_refused_by_name_and_nothing_is_appended(source: Path, tmp_path: Path) -> None:
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main", "what-if"], tmp_path / "x.bundle")
    run(tmp_path / "b", 1, seed=7)  # another main here
    before = heads(tmp_path / "b")
    with Store.open(tmp_path / "b") as b, pytest.raises(BundleConflict) as exc:
        pull_bundle(b, tmp_path / "x.bundle")
    assert exc.value.branch == "main" and exc.value.seq == 0
    assert heads(tmp_path / "b") == before


def test_a_fork_whose_fork_point_is_missing_is_refused(source: Path, tmp_path: Path) -> None:
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["what-if"], tmp_path / "f.bundle")
    with Store.create(tmp_path / "b") as b:
        with pytest.raises(BundleRefused, match="forks from main"):
            pull_bundle(b, tmp_path / "f.bundle")
        assert b.log.count() == 0 and b.log.branches() == []


def rewrite(src: Path, dst: Path, change) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            out.writestr(info.filename, change(info.filename, z.read(info.filename)))


@pytest.mark.parametrize(("what", "change", "says"), [
    ("a score rewritten, its id kept", lambda n, d: d.replace(b'"score":1.0', b'"score":0.0', 1) if n.startswith("events/") else d, "its id does not follow"),
    ("a blob's bytes changed", lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n.startswith("blobs/") else d, "does not hash to its name"),
    ("a manifest that lies about a head", lambda n, d: d.replace(b'"head_seq":', b'"head_seq":1', 1) if n == "manifest.json" else d, "the manifest says"),
])
def test_a_bundle_that_does_not_check_is_damaged_and_nothing_is_appended(source: Path, tmp_path: Path, what: str, change, says: str) -> None:  # type: ignore[no-untyped-def]
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main", "what-if"], tmp_path / "x.bundle")
    rewrite(tmp_path / "x.bundle", tmp_path / "bad.bundle", change)
    with Store.create(tmp_path / "b") as b:
        with pytest.raises(BundleDamaged, match=says):
            pull_bundle(b, tmp_path / "bad.bundle")
        assert b.log.count() == 0 and b.blobs.ids() == [], what


def test_a_truncated_or_flipped_file_is_damaged(source: Path, tmp_path: Path) -> None:
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "x.bundle")
    data = (tmp_path / "x.bundle").read_bytes()
    (tmp_path / "cut.bundle").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    (tmp_path / "flip.bundle").write_bytes(bytes(flipped))
    with Store.create(tmp_path / "b") as b:
        for name in ("cut.bundle", "flip.bundle"):
            with pytest.raises(BundleDamaged):
                pull_bundle(b, tmp_path / name)
        assert b.log.count() == 0


def test_a_bundle_is_never_written_over_a_file_or_into_the_store(source: Path, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("keep me")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with Store.open(source, read_only=True) as s:
        for out in (tmp_path / "taken", tmp_path / "link", source / "x.bundle"):
            with pytest.raises(WriteRefused):
                write_bundle(s, ["main"], out)
    assert (tmp_path / "taken").read_text() == "keep me" and not (tmp_path / "elsewhere").exists()


KILLED = """
import os, sys
sys.path.insert(0, {root!r})
from store import Store
from sia_engine.domain.bundle import pull_bundle
import store.duck.write as w
real = w.DuckWriter.{method}
def dying(self, *a, **k):
    {before}
    real(self, *a, **k)
    {after}
w.DuckWriter.{method} = dying
with Store.open(sys.argv[1]) as s:
    pull_bundle(s, sys.argv[2])
"""


@pytest.mark.parametrize(("where", "method", "before", "after", "complete"), [
    ("inside the transaction", "_insert_rows", "pass", "os._exit(9)", False),
    ("after the commit, before the heads file", "write_heads", "os._exit(9)", "pass", True),
])
def test_a_killed_pull_leaves_the_store_as_before_or_complete(source: Path, tmp_path: Path, where: str, method: str, before: str, after: str,
                                                              complete: bool) -> None:
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main", "what-if"], tmp_path / "x.bundle")
    run(tmp_path / "b", 1, branch="other")
    was = heads(tmp_path / "b")
    code = KILLED.format(root=str(ROOT), method=method, before=before, after=after)
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "b"), str(tmp_path / "x.bundle")]).returncode == 9, where
    with Store.open(tmp_path / "b") as b:
        assert verify_store(b.log, b.blobs).ok
    now = heads(tmp_path / "b")
    assert now == ({**was, **heads(source)} if complete else was), where
    with Store.open(tmp_path / "b") as b:  # and the pull, asked again, completes it (or finds it done)
        pull_bundle(b, tmp_path / "x.bundle")
    assert heads(tmp_path / "b") == {**was, **heads(source)}


def test_the_commands(source: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["bundle", "main", "what-if", "--out", str(tmp_path / "x.bundle"), "--store", str(source), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["branches"] == ["main", "what-if"]
    r = CliRunner().invoke(main, ["pull", str(tmp_path / "x.bundle"), "--store", str(tmp_path / "b"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["created"] == ["main", "what-if"]
    r = CliRunner().invoke(main, ["pull", str(tmp_path / "x.bundle"), "--store", str(tmp_path / "b")])
    assert r.exit_code == 0 and "nothing to append" in " ".join(r.output.split())
    (tmp_path / "junk.bundle").write_bytes(b"<b>not a bundle</b>")
    r = CliRunner().invoke(main, ["pull", str(tmp_path / "junk.bundle"), "--store", str(tmp_path / "b")])
    assert r.exit_code == 2 and "damaged" in r.output and "Traceback" not in r.output


def remanifest(src: Path, dst: Path, change, extra: dict[str, bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w") as out:
        for info in z.infolist():
            data = z.read(info.filename)
            if info.filename == "manifest.json":
                data = json.dumps(change(json.loads(data))).encode()
            out.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            out.writestr(name, data)


def _twice(m):  # type: ignore[no-untyped-def]
    return {**m, "branches": m["branches"] + m["branches"][:1]}


def _renamed(m):  # type: ignore[no-untyped-def]
    return {**m, "branches": [{**m["branches"][0], "name": "a\nb"}]}


def _blob(name: str):  # type: ignore[no-untyped-def]
    return lambda m: {**m, "blobs": {**m["blobs"], name: {"size": 1, "suffix": "bin"}}}


UNNAMED = __import__("hashlib").sha256(b"x").hexdigest()


@pytest.mark.parametrize(("what", "change", "extra", "says"), [
    ("a branch listed twice", _twice, {"events/1.json": b"[]"}, "missing or unexpected|listed twice"),
    ("a branch name the store refuses", _renamed, None, "branch name"),
    ("a blob not named by its sha256", _blob("../../etc"), {"blobs/../../etc": b"x"}, "not named by its sha256"),
    ("a blob no event names", _blob(UNNAMED), {f"blobs/{UNNAMED}": b"x"}, "named by no bundled event"),
])
def test_a_hostile_manifest_is_damaged_and_nothing_is_written(source: Path, tmp_path: Path, what: str, change, extra, says: str) -> None:  # type: ignore[no-untyped-def]
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "x.bundle")
    remanifest(tmp_path / "x.bundle", tmp_path / "bad.bundle", change, extra)
    with Store.create(tmp_path / "b") as b:
        with pytest.raises(BundleDamaged, match=says):
            pull_bundle(b, tmp_path / "bad.bundle")
        assert b.log.count() == 0 and b.blobs.ids() == [], what


def test_a_plain_zip_and_an_empty_fork(source: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as z:
        z.writestr("readme.txt", "hello")
    with Store.create(tmp_path / "b") as b, pytest.raises(BundleDamaged, match="no manifest"):
        pull_bundle(b, tmp_path / "plain.zip")
    copy = tmp_path / "a2"
    subprocess.run(["cp", "-a", str(source), str(copy)], check=True)
    with Store.open(copy) as s:
        s.log.fork("bare", source="main", at_seq=2)  # a ref with no event of its own
        write_bundle(s, ["main", "bare"], tmp_path / "x.bundle")
        write_bundle(s, ["main"], tmp_path / "m.bundle")
    with Store.open(tmp_path / "b") as b:
        pull_bundle(b, tmp_path / "m.bundle")
        r = pull_bundle(b, tmp_path / "x.bundle")  # only a ref to create: no event row at all
        assert r.created == ("bare",) and r.events == 0 and b.log.branch("bare").base_seq == 2


def test_a_damaged_blob_in_the_store_is_reported_and_no_bundle_is_left(source: Path, tmp_path: Path) -> None:
    """Blobs are streamed into the bundle (never all in memory) and re-hashed on the way."""
    from store.errors import BlobCorrupt

    copy = tmp_path / "a2"
    subprocess.run(["cp", "-a", str(source), str(copy)], check=True)
    with Store.open(copy) as s:
        blob = sorted(s.blobs.ids())[0]
        path = s.blobs.path(blob)
        path.chmod(0o644)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(BlobCorrupt):
            write_bundle(s, ["main", "what-if"], out / "x.bundle")
    assert list(out.iterdir()) == []  # neither the bundle nor its temp file


def forge(src: Path, dst: Path, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite payloads with ``change(kind, payload) -> bytes | None`` and recompute every id and
    head after them, as a forger who knows the format would: only the payloads' form can tell."""
    import msgspec

    from store.envelope import event_id

    with zipfile.ZipFile(src) as z:
        members = {i.filename: z.read(i.filename) for i in z.infolist()}
    manifest = json.loads(members["manifest.json"])
    for i, ref in enumerate(manifest["branches"]):
        rows = msgspec.json.decode(members[f"events/{i}.json"], type=list[tuple[int, str, str, int, msgspec.Raw]])
        parent, out = (ref["after_id"] if ref.get("start") else ref["base_id"]), []
        for seq, _, kind, schema, p in rows:
            payload = change(kind, bytes(p)) or bytes(p)
            parent = event_id(parent, ref["name"], kind, schema, payload)
            out.append((seq, parent, kind, schema, msgspec.Raw(payload)))
        if rows:
            ref["head_id"] = parent
        members[f"events/{i}.json"] = msgspec.json.encode(out)
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def _twice(kind: str, p: bytes) -> bytes | None:
    """A string field given twice, the first time forged: readers differ on which counts."""
    if kind != "feedback_verdict":
        return None
    return b'{"rationale":"forged",' + p[1:]


def _spaced(kind: str, p: bytes) -> bytes | None:
    return json.dumps(json.loads(p), indent=1).encode() if kind == "feedback_verdict" else None


def _huge(kind: str, p: bytes) -> bytes | None:
    return p.replace(b'"score":', b'"score":1e400,"_":', 1) if kind == "version_evaluated" else None


@pytest.mark.parametrize(("what", "change", "says"), [
    ("a key given twice", _twice, "gives the key 'rationale' twice"),
    ("a number past a float", _huge, "version_evaluated|payload"),
    ("JSON that is no event (the seal leaves JSON to the decode)", lambda k, p: b"[1,2]" if k == "version_evaluated" else None, "version_evaluated"),
    ("bytes that are not UTF-8 inside a string", lambda k, p: p.replace(b'"rationale":"', b'"rationale":"\xff', 1) if k == "feedback_verdict" else None, "UTF-8|utf-8"),
])
def test_a_payload_another_reader_would_read_otherwise_is_damage(source: Path, tmp_path: Path, what: str, change, says: str) -> None:  # type: ignore[no-untyped-def]
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "x.bundle")
    forge(tmp_path / "x.bundle", tmp_path / "bad.bundle", change)
    with Store.create(tmp_path / "b") as b:
        with pytest.raises(BundleDamaged, match=says):
            pull_bundle(b, tmp_path / "bad.bundle")
        assert b.log.count() == 0, what


def test_a_payload_in_another_form_that_reads_the_same_is_taken(source: Path, tmp_path: Path) -> None:
    """Whitespace and key order do not change what any reader reads (and the ids hash the bytes
    as they are); a payload lacking a field its event has is a history from before the field."""
    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "x.bundle")
    forge(tmp_path / "x.bundle", tmp_path / "spaced.bundle", _spaced)
    forge(tmp_path / "x.bundle", tmp_path / "older.bundle",
          lambda k, p: json.dumps({x: v for x, v in json.loads(p).items() if x != "raw" or v is not None}).encode() if k == "feedback_verdict" else None)
    for name in ("spaced.bundle", "older.bundle"):
        with Store.create(tmp_path / name.replace(".", "-")) as b:
            assert pull_bundle(b, tmp_path / name).events > 0
            assert verify_store(b.log, b.blobs).ok


def test_a_payload_nested_past_the_stack_is_damage_not_a_crash(source: Path, tmp_path: Path) -> None:
    """A free-form field nested hundreds deep, in a form that takes the slow path, once crashed
    the comparison with a bare RecursionError."""
    deep = b"[" * 400 + b"1" + b"]" * 400

    def nest(kind: str, p: bytes) -> bytes | None:
        if kind != "run_started":
            return None
        d = json.loads(p)
        d["config"]["x"] = "DEEP"
        return json.dumps(d).encode().replace(b'"DEEP"', deep)  # json.dumps spaces it: not canonical

    with Store.open(source, read_only=True) as s:
        write_bundle(s, ["main"], tmp_path / "x.bundle")
    forge(tmp_path / "x.bundle", tmp_path / "deep.bundle", nest)
    with Store.create(tmp_path / "b") as b:
        with pytest.raises(BundleDamaged):
            pull_bundle(b, tmp_path / "deep.bundle")
        assert b.log.count() == 0
