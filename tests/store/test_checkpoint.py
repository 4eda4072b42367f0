"""Signed checkpoints (issue 9): a history rewritten with every hash recomputed verifies on its
own, and fails against a checkpoint signed before the rewrite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from sia_engine.cli.main import main
from store import DuckEventLog, NewEvent


def cli(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    return r.exit_code, r.output


def rewrite(src: Path, dst: Path, change: tuple[int, bytes, bytes] | None = None) -> None:
    """``src``'s log appended again, event by event, into a new store at ``dst`` (every id
    recomputed by the log itself), with ``change`` = (seq on main, old bytes, new bytes) applied."""
    (dst / "blobs").mkdir(parents=True)
    for blob in (src / "blobs").rglob("*"):
        if blob.is_file():
            (dst / blob.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(blob, dst / blob.relative_to(src))
    with DuckEventLog(src / "log.duckdb", read_only=True) as old, DuckEventLog(dst / "log.duckdb") as new:
        for b in old.branches():
            if b.base_branch is None:
                new.init_branch(b.name)
            else:
                assert b.base_seq is not None
                new.fork(b.name, source=b.base_branch, at_seq=b.base_seq)
            head = new.branch(b.name).head_id
            for e in old.read(b.name, after_seq=-1):
                payload = e.payload
                if change and b.name == "main" and e.seq == change[0]:
                    assert change[1] in payload
                    payload = payload.replace(change[1], change[2])
                [head] = new.append(b.name, [NewEvent(e.kind, e.schema, payload)], expected_head=head)


def demo_store(path: Path) -> None:
    assert cli("demo", "--store", str(path))[0] == 0


def test_checkpoint_catches_a_rewrite_with_recomputed_hashes(tmp_path: Path) -> None:
    store = tmp_path / "s"
    demo_store(store)
    key = tmp_path / "keys" / "audit.key"
    assert cli("keygen", "--out", str(key))[0] == 0
    assert oct(key.stat().st_mode & 0o777) == "0o600" and Path(f"{key}.pub").is_file()
    code, out = cli("keygen", "--out", str(key))
    assert code == 2 and "never overwritten" in out
    cp = tmp_path / "cp.json"
    code, out = cli("checkpoint", "--sign", str(key), "--out", str(cp), "--store", str(store))
    assert code == 0 and "signed 52 events on 2 branches" in out, out
    pub = f"{key}.pub"
    code, out = cli("verify", "--checkpoint", str(cp), "--public-key", pub, "--store", str(store))
    assert code == 0 and "extends the signed checkpoint" in out, out

    # a legitimate extension still extends it
    from sia_engine.domain.events import ActionTaken
    from sia_engine.domain.history import History
    from store import Store

    with Store.open(store) as s:
        h = History.open(s.log, "main", blobs=s.blobs)
        h.record(ActionTaken(action_id="later", episode_id="e", version_id=str(h.state.head), actor="tool", name="probe"))
    code, out = cli("verify", "--checkpoint", str(cp), "--public-key", pub, "--store", str(store))
    assert code == 0 and "53 events" in out, out
    # the rewrite: one trajectory's score changed, every id after it recomputed by the log itself
    with DuckEventLog(store / "log.duckdb", read_only=True) as log:
        traj = next(e for e in log.read("main") if e.kind == "trajectory_recorded")
        score = json.loads(traj.payload)["score"]
    forged = tmp_path / "forged"
    rewrite(store, forged, (traj.seq, f'"score":{score}'.encode(), b'"score":0.999'))
    shutil.rmtree(store)
    shutil.copytree(forged, store)
    code, out = cli("verify", "--store", str(store))
    assert code == 0 and out.startswith("OK"), out  # the chain alone cannot tell
    code, out = cli("verify", "--checkpoint", str(cp), "--public-key", pub, "--store", str(store))
    assert code == 1 and "was signed as" in out and "the history was rewritten" in out, out


def test_a_checkpoint_that_was_edited_or_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "s"
    demo_store(store)
    a, b = tmp_path / "a.key", tmp_path / "b.key"
    cli("keygen", "--out", str(a))
    cli("keygen", "--out", str(b))
    cp = tmp_path / "cp.json"
    assert cli("checkpoint", "--sign", str(a), "--out", str(cp), "--store", str(store))[0] == 0
    code, out = cli("verify", "--checkpoint", str(cp), "--public-key", f"{b}.pub", "--store", str(store))
    assert code == 2 and "signature does not verify" in out, out
    doc = json.loads(cp.read_text())
    doc["statement"]["events"] = 1  # a forger lowering what was signed
    cp.write_text(json.dumps(doc))
    code, out = cli("verify", "--checkpoint", str(cp), "--public-key", f"{a}.pub", "--store", str(store))
    assert code == 2 and "signature does not verify" in out, out
    code, out = cli("verify", "--checkpoint", str(cp), "--store", str(store))
    assert code == 2 and "go together" in out
    code, out = cli("checkpoint", "--sign", str(cp), "--out", str(tmp_path / "x.json"), "--store", str(store))
    assert code == 2 and "not an unencrypted PEM private key" in out, out
