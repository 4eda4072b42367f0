"""`run_experiment`: arms as forks of one prefix, the test split read once at the end, the table
and the baselines from the log alone (also from a Parquet export), budgets, resumable (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sia_engine.domain.events import decode_envelope
from sia_engine.domain.history import rebuild
from sia_engine.domain.integrity import verify_store
from sia_engine.domain.projection import Recorded
from sia_engine.errors import SiaError
from sia_engine.experiment.arms import run_experiment
from sia_engine.experiment.table import ARMS, experiment_result, experiment_table, result_from_records, table_from_records
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import LoopConfig
from store import Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong

CFG = LoopConfig(task="arith", iterations=0, train_episodes=6, val_episodes=6, samples=2)


class ArithWithReference(type(TASK)):  # type: ignore[misc]
    """arith with a reference method, really scored: always answer 9."""

    def reference_baselines(self, split):  # type: ignore[no-untyped-def]
        eps = self.episodes(split)[: CFG.val_episodes]
        return {"always-9": sum(self.score(e, "9").score for e in eps) / len(eps)}


class ScopedArith(ArithWithReference):
    """Says which cache scope each score was asked in."""

    def __init__(self) -> None:
        super().__init__()
        self.scope, self.scored_in = "", set()

    def cache_scope(self, scope):  # type: ignore[no-untyped-def]
        self.scope = scope

    def score(self, episode, output):  # type: ignore[no-untyped-def]
        self.scored_in.add(self.scope)
        return super().score(episode, output)


REF_TASK = ArithWithReference()


def experiment(store: Store, **kw):  # type: ignore[no-untyped-def]
    return run_experiment(store, task=REF_TASK, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CFG,
                          name="e1", arms=("scaffold", "weights", "both"), seeds=(0, 1), iterations=2, **kw)


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("exp")
    with Store.create(root) as s:
        result = experiment(s)
    return root, result.arms


def test_arms_are_isolated_forks_of_one_evaluated_prefix(done) -> None:  # type: ignore[no-untyped-def]
    root, table = done
    assert [(r.arm, r.seed) for r in table] == [("scaffold", 0), ("scaffold", 1), ("weights", 0), ("weights", 1), ("both", 0), ("both", 1)]
    with Store.open(root, read_only=True) as s:
        infos = {b.name: b for b in s.log.branches()}
        base = [decode_envelope(e) for e in s.log.read("e1-base")]
        splits = [getattr(e, "split", None) for e in base if e.kind() == "version_evaluated"]
        assert splits == ["val", "test"] and "iteration_started" not in [e.kind() for e in base]  # val once; test after the forks
        for r in table:
            info = infos[r.branch]
            assert info.base_branch == "e1-base"  # no arm sees another arm's events
            own = [e.kind for e in s.log.read(r.branch, after_seq=-1)]
            state, _ = rebuild(s.log, r.branch)
            assert own[0] == "branch_forked" and state.run is not None
            assert state.run.levers == ARMS[r.arm] and state.run.config["seed"] == r.seed
            assert ("run_configured" in own) == ((r.arm, r.seed) != ("both", 0))  # the base's own settings need no change
            if r.arm == "scaffold":
                assert "adapter_checkpointed" not in own
            if r.arm == "weights":
                assert "scaffold_patched" not in own
            assert r.iterations == 2 and set(r.levers_used) <= {"scaffold", "weights"}
            assert r.test_score is not None and r.val_score is not None and r.model_calls > 0
        assert verify_store(s.log, s.blobs).ok


def test_the_loop_never_reads_the_test_split(done) -> None:  # type: ignore[no-untyped-def]
    root, table = done
    with Store.open(root, read_only=True) as s:
        base_tests = [e.seq for e in s.log.read("e1-base") if e.kind == "trajectory_recorded" and b'"split":"test"' in e.payload]
        forks = [b.base_seq for b in s.log.branches() if b.base_branch == "e1-base"]
        assert base_tests and min(base_tests) > max(f for f in forks if f is not None)  # after every fork point: no arm sees it
        for r in table:
            own = s.log.read(r.branch, after_seq=-1)
            tests = [i for i, e in enumerate(own) if e.kind == "trajectory_recorded" and b'"split":"test"' in e.payload]
            decisions = [i for i, e in enumerate(own) if e.kind in ("version_accepted", "version_rejected", "feedback_verdict")]
            assert tests and min(tests) > max(decisions)  # scored once, after every decision
            assert len(tests) == CFG.val_episodes and own[-2].kind == "version_evaluated" and own[-1].kind == "baseline_scored"  # then its best artifact


def test_the_table_comes_from_the_log_and_from_its_parquet_export(done, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]

    import pyarrow.parquet as pq

    from replay.export import export_parquet

    root, table = done
    with Store.open(root, read_only=True) as s:
        assert experiment_table(s, "e1") == list(table)
        result = experiment_result(s, "e1")
        export_parquet(s, tmp_path / "pq")
    t = pq.read_table(tmp_path / "pq" / "events.parquet").to_pylist()
    rows = [Recorded.from_row(r["branch"], r["seq"], r["kind"], r["schema"], r["payload"], r["recorded_at"]) for r in t]
    assert table_from_records(rows, "e1") == list(table)
    assert result_from_records(rows, "e1") == result and len(result.baselines) == 3  # the baselines too


def test_it_resumes_without_recording_anything_twice(done) -> None:  # type: ignore[no-untyped-def]
    root, table = done
    with Store.open(root) as s:
        n = s.log.count()
        assert experiment(s).arms == table and s.log.count() == n


def test_bad_settings_are_refused_before_anything_is_recorded(tmp_path: Path) -> None:
    with Store.create(tmp_path) as s:
        for kw, says in (({"arms": ("scaffold", "magic")}, "unknown arm"), ({"seeds": (1, 1)}, "distinct"),
                         ({"name": "no spaces"}, "experiment name")):
            args = {"name": "e2", "arms": ("scaffold",), "seeds": (0,), **kw}
            with pytest.raises(SiaError, match=says):
                run_experiment(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CFG, iterations=1, **args)
        assert s.log.branches() == []


def test_the_command_runs_resumes_and_prints_the_table(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from sia_engine.cli.main import main

    args = ["experiment", "--task", "arith", "--model", "tiny", "--arms", "scaffold,both", "--seeds", "2", "--iterations", "1",
            "--train-episodes", "3", "--val-episodes", "3", "--samples", "2", "--lora-steps", "2", "--store", str(tmp_path), "--json"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output[-2000:]
    doc = json.loads(r.output[r.output.index("{"):])
    rows = doc["arms"]
    assert doc["base_version"]["test"] is not None
    assert {b["method"]: len(b["test_scores"]) for b in doc["baselines"]} == {"best-of-k": 2, "random-search": 2}
    assert doc["comparisons"]["both-vs-scaffold:policy"]["seeds"] == [0, 1]
    assert set(doc["comparisons"]) == {f"{a}-vs-{b}:{m}" for m in ("policy", "artifact") for a, b in (("both", "scaffold"), ("both", "weights"), ("weights", "scaffold"))}
    assert all(x["artifact_test"] is not None and x["scored"] > 0 for x in rows)
    assert set(doc["summary"]["both"]) == {"policy", "artifact"} and "beats" in doc["summary"]["both"]["artifact"]
    assert [(x["arm"], x["seed"]) for x in rows] == [("scaffold", 0), ("scaffold", 1), ("both", 0), ("both", 1)]
    assert all(x["test_score"] is not None and x["iterations"] == 1 for x in rows)
    again = CliRunner().invoke(main, args)
    assert json.loads(again.output[again.output.index("{"):]) == doc
    bad = CliRunner().invoke(main, [("scaffold,magic" if a == "scaffold,both" else a) for a in args])
    assert bad.exit_code == 2 and "unknown arm" in bad.output


def test_random_search_is_a_real_search_and_deterministic() -> None:
    from sia_engine.experiment.baselines import random_search

    six = TASK.episodes("val")[:6], TASK.episodes("test")[:6]
    a = random_search(TASK, *six, experiment="x", k=5, seed=0)
    b = random_search(TASK, *six, experiment="x", k=5, seed=0)
    assert a is not None and a == b and a.evaluations == 30 and 0.0 <= a.score <= 1.0
    d = a.details
    assert len(d["candidates"]) == 5 and a.val_score == max(d["val_scores"]) == d["val_scores"][d["chosen"]]
    val = TASK.episodes("val")[:6]
    want = sum(TASK.score(e, d["candidates"][d["chosen"]]).score for e in val) / 6  # the recorded val score is the real one
    assert a.val_score == round(want, 6)
    many = random_search(TASK, *six, experiment="x", k=200, seed=0)
    assert many is not None and many.val_score is not None and many.val_score >= a.val_score  # its first 5 draws are a's

    class NoRandom:
        name = "x"

    assert random_search(NoRandom(), *six, experiment="x", k=3, seed=0) is None  # type: ignore[arg-type]


def test_baselines_are_recorded_on_the_prefix_after_the_forks_with_the_arms_budget(done) -> None:  # type: ignore[no-untyped-def]
    from sia_engine.domain.events import BaselineScored, TrajectoryRecorded

    root, table = done
    with Store.open(root, read_only=True) as s:
        result = experiment_result(s, "e1")
        base = s.log.read("e1-base")
        forks = max(b.base_seq for b in s.log.branches() if b.base_branch == "e1-base")
        events = [(e.seq, decode_envelope(e)) for e in base]
    recorded = [(q, e) for q, e in events if isinstance(e, BaselineScored)]
    assert recorded and min(q for q, _ in recorded) > forks
    k = max(r.scored for r in table)
    # every arm scored the base (on the prefix) and its 2 candidates on 6 episodes, one output each (temperature 0)
    assert all(r.evaluations == (1 + r.candidates) * 6 for r in table)
    # the searches get as many candidates as an arm scored answers in all: its rollouts (6 episodes x 2 samples an
    # iteration) and its evaluations
    assert k == max(r.iterations * 6 * 2 + r.candidates * 6 for r in table) and k > 3
    methods = {b.method: b for b in result.baselines}
    assert set(methods) == {"best-of-k", "random-search", "reference:always-9"}
    assert methods["reference:always-9"].test_scores == (REF_TASK.reference_baselines("test")["always-9"],)
    for m in ("best-of-k", "random-search"):
        assert methods[m].seeds == (0, 1) and methods[m].evaluations == k * 6
    assert methods["best-of-k"].model_calls == k  # k sampled outputs, on validation prompts taken in turn
    samples = [e for q, e in events if isinstance(e, TrajectoryRecorded) and q > forks and e.split == "val"]
    assert len(samples) == 2 * k  # best-of-k's samples, both seeds, recorded as trajectories
    for _, e in recorded:
        if e.method == "best-of-k":
            chosen = e.details["trajectories"][e.details["chosen"]]
            out = next(t.output for t in samples if t.trajectory_id == chosen)
            test = TASK.episodes("test")[:6]
            assert e.score == round(sum(TASK.score(ep, out).score for ep in test) / 6, 6)  # the chosen sample, scored on test


def test_a_budget_stops_an_arm_and_the_table_says_which(tmp_path: Path) -> None:
    from sia_engine.experiment.arms import Budget

    with Store.create(tmp_path) as s:
        result = run_experiment(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CFG, name="b",
                                arms=("scaffold",), seeds=(0,), iterations=5, budget=Budget(model_calls=30), baselines=False)
        (row,) = result.arms
        # the base's evaluation is on the prefix; each iteration samples 12 (train) and 12 (val): 2 iterations pass 30
        assert row.iterations == 2 and row.stopped == "model_calls" and row.model_calls >= 30
        first = s.log.read("b-scaffold-s0", after_seq=-1)[0]
        assert decode_envelope(first).overrides["budget"] == {"model_calls": 30}  # type: ignore[attr-defined]
        assert result.baselines == ()
        again = run_experiment(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CFG, name="b",
                               arms=("scaffold",), seeds=(0,), iterations=5, budget=Budget(model_calls=30), baselines=False)
        assert again.arms == result.arms  # resumed: still out of budget, nothing more recorded


@pytest.mark.parametrize(("text", "says"), [("calls=10,wall=2.5", None), ("steps=3", None), ("", "empty"), ("calls", "calls=N"),
                                            ("tokens=5", "calls=N"), ("calls=x", "not a number"), ("calls=-1", "positive"),
                                            ("wall=inf", "positive"), ("calls=2.5", "whole number"), ("wall=nan", "positive")])
def test_budgets_are_parsed_or_refused_with_what_to_write(text: str, says: str | None) -> None:
    from sia_engine.experiment.arms import Budget, parse_budget

    if says is None:
        b = parse_budget(text)
        assert b in (Budget(model_calls=10, wall_s=2.5), Budget(train_steps=3))
    else:
        with pytest.raises(SiaError, match=says):
            parse_budget(text)


def test_paired_comparison_seed_by_seed() -> None:
    from sia_engine.experiment.table import ArmResult, paired

    def row(arm: str, seed: int, score: float | None) -> ArmResult:
        return ArmResult(arm, seed, f"e-{arm}-s{seed}", score, None, 1, (), 1, 0, 4, 1, 0, 0.0)

    t = [row("scaffold", 0, 0.5), row("scaffold", 1, 0.4), row("scaffold", 2, 0.6),
         row("both", 0, 0.7), row("both", 1, 0.6), row("both", 2, 0.9), row("both", 3, 0.1)]
    p = paired(t)
    assert p is not None and p.seeds == (0, 1, 2) and p.differences == (0.2, 0.2, 0.3)  # seed 3 has no pair
    # mean 0.2333, sd 0.0577, t(2) 4.303: half-width 0.1434
    assert p.mean == 0.233333 and p.low == 0.0899 and p.high == 0.376767 and p.excludes_zero
    q = paired([row("scaffold", 0, 0.5), row("scaffold", 1, 0.5), row("both", 0, 0.6), row("both", 1, 0.4)])
    assert q is not None and q.mean == 0.0 and not q.excludes_zero
    one = paired([row("scaffold", 0, 0.5), row("both", 0, 0.6)])
    assert one is not None and one.low is None and not one.excludes_zero
    assert paired([row("scaffold", 0, 0.5)]) is None


def test_the_audit_report_plots_the_experiment_from_the_log(done) -> None:  # type: ignore[no-untyped-def]
    import re

    from replay.audit import audit_report

    root, table = done
    with Store.open(root, read_only=True) as s:
        page, report = audit_report(s.log, s.blobs)
        result = experiment_result(s, "e1")
    assert report.ok and "<h2>Experiments</h2>" in page and "Experiment e1" in page
    svg = page[page.index('class="plot experiment"'):]
    svg = svg[: svg.index("</svg>")]
    assert len(re.findall(r'<circle class="seed"', svg)) == len(table) == 6  # a dot per arm and seed
    assert len(re.findall(r'class="mean (policy|artifact)"', svg)) == 6  # each arm's mean, on each measure
    assert len(re.findall(r'<rect class="artifact"', svg)) == 6
    labels = re.findall(r'class="baseline-label">([^<]+)<', svg)
    assert [x.rsplit(" ", 1)[0] for x in labels] == ["base version", "best-of-k", "random-search", "reference:always-9"]
    assert labels[0].endswith(f"{result.base_test:.3f}")
    for r in table:
        assert f"{r.arm} seed {r.seed}: {r.test_score:.4f}" in svg
    for a, b in (("both", "scaffold"), ("both", "weights"), ("weights", "scaffold")):  # the comparisons `sia experiment` prints
        assert f"{a} vs {b} (policy: the head&#x27;s mean proposal), seed by seed" in page and f"{a} vs {b} (best artifact), seed by seed" in page


def test_every_branch_of_the_experiment_verifies_and_replays(done) -> None:  # type: ignore[no-untyped-def]
    from replay.recorded import replay_recorded

    root, table = done
    with Store.open(root, read_only=True) as s:
        assert verify_store(s.log, s.blobs).ok
        rows = {r.branch: r for r in table}
        for b in s.log.branches():
            r = replay_recorded(s, b.name, REF_TASK)  # raises at the first disagreement
            assert r.rescored > 0 and not r.skipped
            if b.name == "e1-base":  # the base's test score and every baseline, recomputed by the experiment's own functions
                assert r.baselines == 5 and r.evaluations == 2 and not r.unfinished
            else:
                assert r.verdicts == 2 and r.decisions == rows[b.name].candidates  # every verdict and gate decision recomputed


def test_each_arm_and_each_baseline_seed_is_scored_in_a_cache_scope_of_its_own(tmp_path: Path) -> None:
    """A scorer that caches (scrna-denoise, TriMul) answers an arm only from what that arm ran: the
    local executor records what a worker of its own records (the Ray executor), and a bundle of
    one branch names no run made in another."""
    task = ScopedArith()
    with Store.create(tmp_path) as s:
        run_experiment(s, task=task, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CFG, name="e1",
                       arms=("scaffold", "weights"), seeds=(0,), iterations=1)
    assert {"e1-scaffold-s0", "e1-weights-s0", "e1:random-search:0", "e1:best-of-k:0"} <= task.scored_in, task.scored_in


def test_each_arm_records_its_best_artifact_chosen_on_val_and_scored_once_on_test(done) -> None:  # type: ignore[no-untyped-def]
    """The second measure, like the searches': of every answer the arm scored (rollouts and
    evaluations, after its fork), the best on validation as the answer to every episode, on test."""
    from sia_engine.domain.events import BaselineScored, TrajectoryRecorded

    root, table = done
    val, test = TASK.episodes("val")[:6], TASK.episodes("test")[:6]
    with Store.open(root, read_only=True) as s:
        for r in table:
            own = [decode_envelope(e) for e in s.log.read(r.branch, after_seq=-1)]
            [art] = [e for e in own if isinstance(e, BaselineScored)]
            answers = [e.output for e in own if isinstance(e, TrajectoryRecorded) and e.split in ("train", "val")]
            distinct = list(dict.fromkeys(answers))
            means = [round(sum(TASK.score(ep, a).score for ep in val) / 6, 6) for a in distinct]
            best = max(range(len(distinct)), key=lambda i: (means[i], -i))
            assert art.method == "best-artifact" and art.details["scored"] == len(answers) == r.scored
            assert art.val_score == means[best] == r.artifact_val and art.details["candidates"] == len(distinct) == r.artifact_candidates
            assert art.score == r.artifact_test == round(sum(TASK.score(ep, distinct[best]).score for ep in test) / 6, 6)
            assert own[-1] is art or isinstance(own[-1], BaselineScored)  # after the test score, the arm's last event


def test_paired_comparisons_on_the_artifact_measure() -> None:
    from sia_engine.experiment.table import ArmResult, paired

    def row(arm: str, seed: int, policy: float, artifact: float) -> ArmResult:
        return ArmResult(arm, seed, f"e-{arm}-s{seed}", policy, None, 1, (), 1, 0, 1, 1, 0, 1.0, artifact_test=artifact)

    table = [row("both", 0, 0.1, 0.9), row("both", 1, 0.2, 0.8), row("scaffold", 0, 0.3, 0.5), row("scaffold", 1, 0.4, 0.6)]
    p, a = paired(table, "both", "scaffold"), paired(table, "both", "scaffold", "artifact")
    assert p is not None and a is not None and p.differences == (-0.2, -0.2) and a.differences == (0.4, 0.2)
    assert "best artifact" in a.describe() and "policy" in p.describe()
