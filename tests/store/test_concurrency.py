"""Racing writers (issue 9): threads sharing one log, processes sharing one store. Exactly one
wins each race; no event is lost, duplicated or interleaved; the loser gets ConcurrencyError
(threads) or StoreLocked (processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from store import ConcurrencyError, DuckEventLog, NewEvent

ROOT = Path(__file__).resolve().parents[2]


def test_threads_racing_on_one_branch(tmp_path: Path) -> None:
    log = DuckEventLog(tmp_path / "log.duckdb", flush_every=37)  # flushes land mid-race too
    log.init_branch("main")
    wins = {t: 0 for t in range(4)}
    losses = {t: 0 for t in range(4)}
    start = threading.Barrier(4)

    def writer(t: int) -> None:
        start.wait()
        for b in range(60):
            while True:
                head = log.branch("main").head_id
                batch = [NewEvent("k", 1, json.dumps({"t": t, "b": b, "i": i}).encode()) for i in range(5)]
                try:
                    log.append("main", batch, expected_head=head)
                    wins[t] += 1
                    break
                except ConcurrencyError:
                    losses[t] += 1

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    events = log.read("main")
    assert len(events) == 5 * sum(wins.values()) == 4 * 60 * 5
    payloads = [json.loads(e.payload) for e in events]
    for k in range(0, len(payloads), 5):  # each batch whole and in order: never interleaved
        batch = payloads[k:k + 5]
        assert [p["i"] for p in batch] == [0, 1, 2, 3, 4] and len({(p["t"], p["b"]) for p in batch}) == 1
    assert len({(p["t"], p["b"]) for p in payloads}) == 240  # none lost, none twice
    assert log.verify().ok
    log.close()


RACER = """
import json, sys, time
sys.path.insert(0, {root!r})
from store import DuckEventLog, NewEvent, StoreLocked
try:
    log = DuckEventLog(sys.argv[1])
except StoreLocked as e:
    print(json.dumps({{"locked": str(e)}})); sys.exit(0)
if "main" not in [b.name for b in log.branches()]:
    log.init_branch("main")
for i in range(50):
    log.append("main", [NewEvent("k", 1, json.dumps({{"who": sys.argv[2], "i": i}}).encode())], expected_head=log.branch("main").head_id)
time.sleep(1.0)  # hold the store while the other one tries
log.close()
print(json.dumps({{"wrote": 50}}))
"""


def test_processes_racing_for_one_store(tmp_path: Path) -> None:
    DuckEventLog(tmp_path / "log.duckdb").close()
    procs = [subprocess.Popen([sys.executable, "-c", RACER.format(root=str(ROOT)), str(tmp_path / "log.duckdb"), who],
                              stdout=subprocess.PIPE, text=True) for who in ("a", "b")]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    assert sum("wrote" in r for r in results) == 1 and sum("locked" in r for r in results) == 1
    locked = next(r["locked"] for r in results if "locked" in r)
    assert "is locked by another process" in locked and "PID" in locked
    with DuckEventLog(tmp_path / "log.duckdb", read_only=True) as log:
        events = log.read("main")
        assert len(events) == 50 and len({json.loads(e.payload)["who"] for e in events}) == 1 and log.verify().ok
