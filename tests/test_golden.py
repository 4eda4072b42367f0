"""Golden logs: a stored history must keep its ids, decode and reduce to the same state with
every future engine version; its tampered twin must fail. Regenerate only on purpose
(``python -m tests.fixtures.make_golden``)."""

from __future__ import annotations

import json
from pathlib import Path

from sia_engine.domain.history import rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.state import state_hash
from store import MemoryEventLog, NewEvent

FIXTURES = Path(__file__).parent / "fixtures"


def replay(path: Path) -> tuple[MemoryEventLog, list[str], dict[str, str]]:
    """Re-append the stored events; return the log, the ids that disagree, and the recorded hashes."""
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    branches = [x for x in lines if x["type"] == "branch"]
    events = [x for x in lines if x["type"] == "event"]
    log = MemoryEventLog()
    mismatched: list[str] = []
    for b in branches:
        if b["base_branch"] is None:
            log.init_branch(b["name"])
        else:
            log.fork(b["name"], source=b["base_branch"], at_seq=b["base_seq"])
        for e in (e for e in events if e["branch"] == b["name"]):
            [got] = log.append(b["name"], [NewEvent(e["kind"], e["schema"], e["payload"].encode())], expected_head=log.branch(b["name"]).head_id)
            if got != e["id"]:
                mismatched.append(f"{e['branch']}#{e['seq']}")
    return log, mismatched, {b["name"]: b["state_hash"] for b in branches}


def test_golden_log_keeps_its_ids_and_state() -> None:
    log, mismatched, hashes = replay(FIXTURES / "golden_v1.jsonl")
    assert mismatched == []
    assert verify_store(log).ok
    for name, h in hashes.items():
        assert state_hash(rebuild(log, name)[0]) == h


def test_golden_log_written_before_a_schema_change_is_upcast() -> None:
    """feedback_verdict went to schema 2 after the golden log was written: its schema-1 events are
    upcast on read (ids unchanged, since the stored bytes are), and the history still verifies."""
    from sia_engine.domain.events import FeedbackVerdict, decode_envelope

    log, _, _ = replay(FIXTURES / "golden_v1.jsonl")
    old = [e for e in log.read("main") if e.kind == "feedback_verdict"]
    assert old and all(e.schema == 1 for e in old) and FeedbackVerdict.SCHEMA == 2
    plans = [v.training_plan for v in map(decode_envelope, old) if isinstance(v, FeedbackVerdict) and v.training_plan]
    assert plans and all(p.recipe in ("sft", "rft") for p in plans)


def test_tampered_twin_fails() -> None:
    log, mismatched, _ = replay(FIXTURES / "golden_v1_tampered.jsonl")
    # one changed byte in main#2: that id and every id chained after it differ
    assert mismatched[0] == "main#2"
    assert len(mismatched) == log.count() - 2
