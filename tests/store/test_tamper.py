"""Tampering with a DuckDB store outside the API is detected by verify, with exact messages."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from store import DuckEventLog, NewEvent, event_id
from tests.conftest import FakeClock


def ev(i: int) -> NewEvent:
    return NewEvent("thing_happened", 1, f'{{"i":{i}}}'.encode())


@pytest.fixture
def built(tmp_path: Path) -> tuple[Path, list[str], list[str]]:
    p = tmp_path / "log.duckdb"
    with DuckEventLog(p, clock=FakeClock()) as log:
        log.init_branch("main")
        main = log.append("main", [ev(i) for i in range(8)], expected_head=None)
        log.fork("exp", source="main", at_seq=3)
        exp = log.append("exp", [ev(100 + i) for i in range(3)], expected_head=main[3])
        assert log.verify().ok
    return p, main, exp


def tamper(p: Path, sql: str, params: list[object] | None = None) -> None:
    con = duckdb.connect(str(p))
    con.execute(sql, params or [])
    con.close()


def first_problem(p: Path) -> str:
    with DuckEventLog(p, create=False) as log:
        report = log.verify()
    assert not report.ok
    return str(report.first)


def test_changed_payload_byte(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    tamper(p, """UPDATE events SET payload = '{"i":9}' WHERE branch = 'main' AND seq = 5""")
    computed = event_id(main[4], "main", "thing_happened", 1, b'{"i":9}')
    assert first_problem(p) == (
        f"main#5 ({main[5]}): id does not match the event's content (the content hashes to {computed}): "
        "a stored byte was changed"
    )


def test_changed_id(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    forged = "f" * 64
    tamper(p, "UPDATE events SET id = ? WHERE branch = 'main' AND seq = 2", [forged])
    with DuckEventLog(p, create=False) as log:
        problems = [str(x) for x in log.verify().problems]
    assert problems[0] == (
        f"main#2 ({forged}): id does not match the event's content (the content hashes to {main[2]}): "
        "a stored byte was changed"
    )
    assert problems[1] == (
        f"main#3 ({main[3]}): parent is {main[2]} but the previous event in the history is {forged}: "
        "the hash chain is broken here"
    )


def test_deleted_row(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    tamper(p, "DELETE FROM events WHERE branch = 'main' AND seq = 6")
    assert first_problem(p) == (
        f"main#7 ({main[7]}): expected seq 6, found seq 7: an event is missing or the order was changed"
    )


def test_deleted_last_row(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    tamper(p, "DELETE FROM events WHERE branch = 'main' AND seq = 7")
    assert first_problem(p) == (
        f"branch main: the branch ref records head seq 7 ({main[7]}) but the last stored event is seq 6 "
        f"({main[6]}): events were removed from or added to the branch outside the API"
    )


def test_reordered_seq(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    tamper(p, "UPDATE events SET seq = 100 WHERE branch = 'main' AND seq = 4")
    tamper(p, "UPDATE events SET seq = 4 WHERE branch = 'main' AND seq = 5")
    tamper(p, "UPDATE events SET seq = 5 WHERE branch = 'main' AND seq = 100")
    assert first_problem(p) == (
        f"main#4 ({main[5]}): parent is {main[4]} but the previous event in the history is {main[3]}: "
        "the hash chain is broken here"
    )


def test_forged_row_inserted_with_sql(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    # A forger who even computes a correct id for the row still leaves the ref behind.
    payload = b'{"i":666}'
    fid = event_id(main[7], "main", "thing_happened", 1, payload)
    tamper(
        p,
        "INSERT INTO events VALUES (?, ?, 'main', 8, 'thing_happened', 1, now(), ?)",
        [fid, main[7], payload.decode()],
    )
    assert first_problem(p) == (
        f"branch main: the branch ref records head seq 7 ({main[7]}) but the last stored event is seq 8 "
        f"({fid}): events were removed from or added to the branch outside the API"
    )


def test_forged_row_with_made_up_id(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, _ = built
    tamper(p, "INSERT INTO events VALUES (?, ?, 'ghost', 0, 'k', 1, now(), '{}')", ["a" * 64, None])
    assert first_problem(p) == f"ghost#0 ({'a' * 64}): event stored on branch 'ghost', which has no ref: it was inserted outside the API"


def test_fork_point_rewritten(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, exp = built
    tamper(p, "UPDATE branches SET base_id = ? WHERE name = 'exp'", ["b" * 64])
    with DuckEventLog(p, create=False) as log:
        problems = [str(x) for x in log.verify().problems]
    assert f"branch exp: fork point main#3 ({'b' * 64}) is not in the log" in problems


def test_tamper_in_fork(built: tuple[Path, list[str], list[str]]) -> None:
    p, _, exp = built
    tamper(p, """UPDATE events SET kind = 'other_thing' WHERE branch = 'exp' AND seq = 1""")
    assert first_problem(p).startswith(f"exp#1 ({exp[1]}): id does not match the event's content")


def test_reports_problems_in_history_order(built: tuple[Path, list[str], list[str]]) -> None:
    p, main, exp = built
    tamper(p, """UPDATE events SET payload = '{"i":-1}' WHERE branch = 'exp' AND seq = 0""")
    tamper(p, """UPDATE events SET payload = '{"i":-1}' WHERE branch = 'main' AND seq = 6""")
    with DuckEventLog(p, create=False) as log:
        problems = log.verify().problems
    assert [(x.branch, x.seq) for x in problems] == [("main", 6), ("exp", 0)]
