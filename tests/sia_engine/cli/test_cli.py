"""The `sia` command, through click's runner and once as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import duckdb
import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("cli") / "store"
    r = CliRunner().invoke(main, ["demo", "--store", str(p), "--json"])
    assert r.exit_code == 0, r.output
    return p


STORELESS = {"tasks", "baseline", "score", "keygen"}  # commands that read no store


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args))


def test_every_command_has_help_with_an_example() -> None:
    assert "Example" in (main.help or "")
    for name in main.commands:
        r = run(name, "--help")
        assert r.exit_code == 0
        assert "Example:" in r.output, name
        assert "--json" in r.output, name
        assert ("--store" in r.output) == (name not in STORELESS), name


def test_init_and_empty_log(tmp_path: Path) -> None:
    r = run("init", "--store", str(tmp_path / "s"), "--json")
    assert r.exit_code == 0
    info = json.loads(r.output)
    assert info["branches"] == ["main"] and info["events"] == 0
    r = run("init", "--store", str(tmp_path / "s"))  # idempotent
    assert r.exit_code == 0 and "store ready" in r.output
    assert json.loads(run("log", "--store", str(tmp_path / "s"), "--json").output) == []


def test_demo_summary(demo_store: Path) -> None:
    r = run("demo", "--store", str(demo_store.parent / "again"))
    assert r.exit_code == 0
    assert "versions on main (synthetic scores)" in r.output and "verified" in r.output


def test_log_filters(demo_store: Path) -> None:
    r = run("log", "--store", str(demo_store), "--json", "--kind", "version_evaluated", "--limit", "0")
    events = json.loads(r.output)
    assert len(events) == 5 and {e["kind"] for e in events} == {"version_evaluated"}  # the initial version and four candidates
    assert all(e["payload"]["kind"] == "version_evaluated" for e in events)
    fork = json.loads(run("log", "--store", str(demo_store), "--json", "--branch", "main-whatif", "--limit", "2").output)
    assert [e["branch"] for e in fork] == ["main-whatif", "main-whatif"]
    assert [e["kind"] for e in fork] == ["branch_forked", "rolled_back"]
    assert "history of main" in run("log", "--store", str(demo_store)).output


def test_show_event_and_version(demo_store: Path) -> None:
    ev = json.loads(run("show", "main#0", "--store", str(demo_store), "--json").output)
    assert ev["kind"] == "run_started" and ev["seq"] == 0
    same = json.loads(run("show", ev["id"][:10], "--store", str(demo_store), "--json").output)
    assert same["id"] == ev["id"]
    vid = json.loads(run("log", "--store", str(demo_store), "--json", "--kind", "version_accepted").output)[0]["payload"]["version_id"]
    v = json.loads(run("show", vid[:12], "--store", str(demo_store), "--json").output)
    assert v["version_id"] == vid and v["status"] == "accepted"
    r = run("show", "main#999", "--store", str(demo_store))
    assert r.exit_code == 2 and "no event main#999 in this log" in r.output
    r = run("show", "abc", "--store", str(demo_store))
    assert r.exit_code == 2 and "give at least 6 characters" in r.output


def test_branches(demo_store: Path) -> None:
    bs = json.loads(run("branches", "--store", str(demo_store), "--json").output)
    assert [b["name"] for b in bs] == ["main", "main-whatif"]
    assert bs[1]["base_branch"] == "main"


def test_sql(demo_store: Path) -> None:
    rows = json.loads(run("sql", "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY kind", "--store", str(demo_store), "--json").output)
    assert {"kind": "run_started", "n": 1} in rows
    r = run("sql", "DELETE FROM events", "--store", str(demo_store))
    assert r.exit_code == 2 and "only read-only SELECT queries are allowed, got a DELETE statement" in r.output


def test_verify_ok_then_tampered(demo_store: Path, tmp_path: Path) -> None:
    r = run("verify", "--store", str(demo_store))
    assert r.exit_code == 0 and r.output.startswith("OK: 52 events on 2 branches, 2 blobs")
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_store, bad)
    con = duckdb.connect(str(bad / "log.duckdb"))
    eid, seq = con.execute("SELECT id, seq FROM events WHERE kind = 'trajectory_recorded' ORDER BY seq LIMIT 1").fetchall()[0]
    con.execute("""UPDATE events SET payload = replace(payload::VARCHAR, '"score":', '"score":9')::JSON WHERE id = ?""", [eid])
    con.close()
    r = run("verify", "--store", str(bad))
    assert r.exit_code == 1
    assert r.output.startswith(f"FAILED: 1 problem(s); first: main#{seq} ({eid}): id does not match the event's content")
    out = json.loads(run("verify", "--store", str(bad), "--json").output)
    assert out["ok"] is False and out["problems"][0]["seq"] == seq


def test_missing_store_is_a_clean_error(tmp_path: Path) -> None:
    r = run("log", "--store", str(tmp_path / "none"))
    assert r.exit_code == 2
    assert f"error: no store at {tmp_path / 'none'}: create one with `sia init --store" in r.output


def test_console_script_runs(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "sia_engine.cli.main", "branches", "--store", str(tmp_path / "x")], capture_output=True, text=True)
    assert p.returncode == 2 and "no store at" in p.stderr


def test_run_with_the_tiny_model_then_resume(tmp_path: Path) -> None:
    store = str(tmp_path / "run")
    args = ["run", "--task", "arith", "--model", "tiny", "--store", store, "--lora-steps", "2", "--train-episodes", "4", "--val-episodes", "4"]
    r = run(*args, "--iterations", "2", "--json")
    assert r.exit_code == 0, r.output
    first = json.loads(r.output[r.output.index("{"):])
    assert first["iterations"] == 2 and first["model"] == "tiny" and first["versions"][0]["lever"] == "initial"
    r = run(*args, "--iterations", "3", "--json")
    second = json.loads(r.output[r.output.index("{"):])
    assert second["iterations"] == 3 and second["events"] > first["events"]
    r = run(*args, "--iterations", "3", "--seed", "9")
    assert r.exit_code == 2 and "this branch holds a run with seed 0, not 9" in r.output
    r = run(*args, "--iterations", "3")
    assert r.exit_code == 0 and "agent versions" in r.output and "accepted?" in r.output
    assert run("verify", "--store", store).exit_code == 0


def test_run_unknown_task_and_model(tmp_path: Path) -> None:
    r = run("run", "--task", "nope", "--store", str(tmp_path))
    assert r.exit_code == 2 and "unknown task 'nope'; available: arith, lawbench-charge, scrna-denoise" in r.output
    r = run("run", "--task", "arith", "--model", str(tmp_path / "missing"), "--store", str(tmp_path / "s"))
    assert r.exit_code == 2 and "not found" in r.output


def test_tasks_lists_tasks_with_their_data() -> None:
    rows = json.loads(run("tasks", "--json").output)
    assert [r["name"] for r in rows] == ["arith", "lawbench-charge", "scrna-denoise", "trimul"]
    assert rows[0]["data"] == "built in" and "--data FILE.h5ad of raw integer counts" in rows[2]["data"]
    assert "needs a CUDA GPU" in rows[3]["description"]


def test_baseline_prints_raw_and_normalised_metrics(tmp_path: Path) -> None:
    from tests.conftest import shared_data

    data = str(shared_data("scrna", "pbmc68k_reduced_counts.h5ad"))
    r = run("baseline", "scrna-denoise", "--data", data, "--method", "perfect", "--seed", "0", "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert (got["mse_normalized"], got["poisson_normalized"], got["score"]) == (1.0, 1.0, 1.0) and got["genes"] <= 765
    r = run("baseline", "scrna-denoise", "--data", str(tmp_path / "none.h5ad"), "--method", "magic")
    assert r.exit_code == 2 and "no count data at" in r.output


def test_audit_report(demo_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.html"
    r = run("audit", "--store", str(demo_store), "--out", str(out), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["verified"] is True
    page = out.read_text()
    assert "VERIFIED: 52 events, 2 branches" in page and "Branch main-whatif (forked from main#13)" in page
    assert page.count("<circle") == 5 + 2  # main's five versions; the fork grew from main#13, after iteration 0's two
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(demo_store, bad)
    con = duckdb.connect(str(bad / "log.duckdb"))
    con.execute("DELETE FROM events WHERE branch = 'main' AND seq = 5")
    con.close()
    r = run("audit", "--store", str(bad), "--out", str(tmp_path / "bad.html"))
    assert r.exit_code == 1 and "NOT verified" in r.output
    assert "NOT VERIFIED: " in (tmp_path / "bad.html").read_text()
    # a symlink planted where the page goes is replaced by the page, never written through
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "linked.html").symlink_to(victim)
    assert run("audit", "--store", str(demo_store), "--out", str(tmp_path / "linked.html")).exit_code == 0
    assert victim.read_text() == "keep me" and not (tmp_path / "linked.html").is_symlink()


def test_large_json_output_is_written_plain(capsys) -> None:  # type: ignore[no-untyped-def]
    """rich pretty-prints small JSON; a large answer (a whole log) goes out as one plain line."""
    import json as _json

    from sia_engine.cli.api import emit_json

    big = [{"i": i, "text": "x" * 50} for i in range(5000)]
    emit_json(big)
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and _json.loads(printed) == big


def test_log_tail_reads_only_the_last_events(demo_store: Path) -> None:
    import json as _json

    full = _json.loads(CliRunner().invoke(main, ["log", "--limit", "0", "--json", "--store", str(demo_store)]).output)
    tail = _json.loads(CliRunner().invoke(main, ["log", "--limit", "3", "--json", "--store", str(demo_store)]).output)
    assert [e["id"] for e in tail] == [e["id"] for e in full[-3:]]


def test_log_of_everything_is_streamed_and_equals_the_log(demo_store: Path) -> None:
    """`sia log --limit 0 --json` writes the array as it reads (it never holds the list): same
    document as the events read whole, also with --kind, also for an empty selection."""
    import json as _json

    from sia_engine.cli.api import envelope_dict
    from store import Store as _Store

    with _Store.open(demo_store, read_only=True) as s:
        expected = [_json.loads(_json.dumps(envelope_dict(e))) for e in s.log.read("main")]
        accepted = [e.id for e in s.log.read("main", kinds=["version_accepted"])]
    r = CliRunner().invoke(main, ["log", "--limit", "0", "--json", "--store", str(demo_store)])
    assert r.exit_code == 0 and _json.loads(r.output) == expected and len(expected) > 3
    r = CliRunner().invoke(main, ["log", "--limit", "0", "--json", "--kind", "version_accepted", "--store", str(demo_store)])
    assert [e["id"] for e in _json.loads(r.output)] == accepted
    r = CliRunner().invoke(main, ["log", "--limit", "0", "--json", "--kind", "no_such_kind", "--store", str(demo_store)])
    assert _json.loads(r.output) == []


def test_run_prints_each_feedback_verdict(tmp_path: Path) -> None:
    base = ["run", "--task", "arith", "--model", "tiny", "--lora-steps", "2", "--train-episodes", "4", "--val-episodes", "4", "--iterations", "1"]
    r = run(*base, "--store", str(tmp_path / "rule"))
    assert r.exit_code == 0, r.output
    assert "feedback (rule): patch the scaffold (replace /output_format)" in r.output
    r = run(*base, "--store", str(tmp_path / "llm"), "--feedback", "llm")
    assert r.exit_code == 0, r.output
    line = " ".join(r.output[r.output.index("feedback (llm):"):].split())  # unwrapped
    assert "lever: " in line and "the rule policy: scaffold" in line


def test_describe_verdict_says_what_each_verdict_asks() -> None:
    from sia_engine.cli.progress import describe_verdict
    from sia_engine.domain.events import FeedbackVerdict, TrainingPlan
    from sia_engine.domain.payloads import ChoiceStage, ModelChoice
    from sia_engine.domain.scaffold import PatchOp

    vid = "a" * 64
    plan = TrainingPlan(trajectory_ids=("t1", "t2"), recipe="grpo")
    assert describe_verdict(FeedbackVerdict(vid, "weights", "r", "rule", training_plan=plan)) == "train the weights (grpo, 2 trajectories)"
    one = TrainingPlan(trajectory_ids=("t1",), recipe="rft")
    assert describe_verdict(FeedbackVerdict(vid, "weights", "r", "rule", training_plan=one)) == "train the weights (rft, 1 trajectory)"
    assert describe_verdict(FeedbackVerdict(vid, "scaffold", "r", "rule", patch=(PatchOp("add", "/examples/-", {"input": "x", "output": "y"}),))) \
        == "patch the scaffold (add /examples/-)"
    assert describe_verdict(FeedbackVerdict(vid, "none", "r", "llm", valid=False, raw="blah")) == "invalid, not acted on ('blah')"
    stage = ChoiceStage(stage="lever", chosen=1, chosen_label="nothing this time", excluded=(), method="logprob",
                        options=(), preferred=None, tied=(1, 2))
    chosen = FeedbackVerdict(vid, "none", "r", "llm", choice=ModelChoice(rule_verdict="weights", stages=(stage,)))
    assert describe_verdict(chosen) == "no change this iteration [lever: 'nothing this time' (tie rule); the rule policy: weights]"
    bandit = FeedbackVerdict(vid, "none", "r", "bandit", choice=ModelChoice(stages=(stage,)))  # records no rule verdict
    assert describe_verdict(bandit) == "no change this iteration [lever: 'nothing this time' (tie rule)]"


def test_run_appends_nothing_to_a_store_that_does_not_verify(tmp_path: Path) -> None:
    """Issue 19, finding 10: `sia run` resumed and appended onto a store whose blob was deleted."""
    import shutil

    store = tmp_path / "s"
    assert run("demo", "--store", str(store)).exit_code == 0
    blobs = sorted(p for p in (store / "blobs").rglob("*") if p.is_file())
    blobs[0].unlink()
    before = (store / "log.duckdb").read_bytes()
    for argv in (["run", "--task", "arith", "--model", "tiny", "--iterations", "2"], ["experiment", "--task", "arith", "--model", "tiny"]):
        r = run(*argv, "--store", str(store))
        assert r.exit_code == 2 and "does not verify" in r.output and "appends nothing" in r.output, r.output
    assert (store / "log.duckdb").read_bytes() == before
    shutil.rmtree(store)
