"""Projections: one pass over a branch feeds every read model, each sees only the kinds it names,
the readers of an event kind are found from the kind, and the audit reads each branch once."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sia_engine.domain.history import rebuild
from sia_engine.domain.projection import (
    AdaptersTrained,
    KindCounts,
    Projection,
    RecipeByVersion,
    Recorded,
    StateProjection,
    fold,
    histories,
    project,
    readers,
    records,
)
from sia_engine.domain.state import state_hash
from store import Envelope, MemoryEventLog
from tests.test_golden import replay

GOLDEN = Path(__file__).parents[2] / "fixtures" / "golden_v1.jsonl"


@pytest.fixture(scope="module")
def golden() -> MemoryEventLog:
    log, mismatched, _ = replay(GOLDEN)
    assert not mismatched
    return log


class Kinds(Projection[list[str]]):
    """The kinds it was given, in order (a probe)."""

    kinds = frozenset({"feedback_verdict", "adapter_checkpointed"})

    def initial(self) -> list[str]:
        return []

    def apply(self, value: list[str], r: Recorded) -> list[str]:
        return [*value, r.kind]


def test_one_pass_gives_what_each_projection_gives_alone(golden: MemoryEventLog) -> None:
    recs = list(records(golden, "main"))
    together = fold([KindCounts(), StateProjection(), RecipeByVersion(), AdaptersTrained(), Kinds()], recs)
    alone = [fold([p], recs)[0] for p in (KindCounts(), StateProjection(), RecipeByVersion(), AdaptersTrained(), Kinds())]
    assert together == alone
    counts, state, recipes, adapters, kinds = together
    assert state_hash(state) == state_hash(rebuild(golden, "main")[0])  # the reducer, as a projection
    assert counts == Counter(r.kind for r in recs) and sum(counts.values()) == len(recs)
    assert set(kinds) == {"feedback_verdict", "adapter_checkpointed"}  # never a kind it did not name
    assert [e.version_id for _, e in adapters] == list(recipes) and all(len(i) == 64 for i, _ in adapters)
    assert len(adapters) == 2 and {i for i, _ in adapters} <= {env.id for env in golden.read("main")}  # each with its event's id


class CountingLog:
    """A log that counts how often each branch is read, and which kinds were asked for."""

    def __init__(self, log: MemoryEventLog) -> None:
        self.log = log
        self.reads: Counter[str] = Counter()
        self.kinds: list[Any] = []

    def read(self, branch: str, **kw: Any) -> Iterator[Envelope]:
        self.reads[branch] += 1
        self.kinds.append(kw.get("kinds"))
        return self.log.read(branch, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)


def test_project_asks_the_log_only_for_the_kinds_it_needs(golden: MemoryEventLog) -> None:
    log = CountingLog(golden)
    [recipes] = project(log, "main", RecipeByVersion())  # type: ignore[arg-type]
    assert log.kinds == [["adapter_checkpointed"]] and recipes
    project(log, "main", RecipeByVersion(), KindCounts())  # type: ignore[arg-type]
    assert log.kinds[-1] is None  # a projection of every kind: everything, still once
    assert log.reads == {"main": 2}


def test_the_readers_of_a_kind_are_found_from_the_kind() -> None:
    import replay.audit  # noqa: F401  (registers the report's projections)
    import sia_engine.experiment.table  # noqa: F401

    found = readers("adapter_checkpointed")
    for name in ("sia_engine.domain.projection.RecipeByVersion", "sia_engine.domain.projection.AdaptersTrained",
                 "replay.diff.IterationRows", "replay.audit_parts.ProvenanceProjection", "sia_engine.experiment.table.ArmTable"):
        assert name in found, (name, found)
    assert "sia_engine.domain.projection.KindCounts" not in found  # an every-kind reader is not listed
    assert readers("no_such_kind") == []


def test_the_audit_reads_each_branch_once(golden: MemoryEventLog) -> None:
    from replay.audit import audit_report

    log = CountingLog(golden)
    page, report = audit_report(log, None)  # type: ignore[arg-type]
    assert report.ok and "Lineage" in page
    assert log.reads == {b.name: 1 for b in golden.branches()}, log.reads


def test_histories_from_own_events_are_what_the_log_reads(golden: MemoryEventLog) -> None:
    branches = golden.branches()
    own = {b.name: list(golden.read(b.name, after_seq=-1)) for b in branches}
    whole = histories(branches, own)
    assert {name: [e.id for e in envs] for name, envs in whole.items()} == {b.name: [e.id for e in golden.read(b.name)] for b in branches}
    # a fork of a fork, and a fork cut in the middle of its source's own events
    golden2, _, _ = replay(GOLDEN)
    golden2.fork("deeper", source="main-whatif", at_seq=0)
    golden2.fork("side", source="main", at_seq=20)
    branches = golden2.branches()
    own = {b.name: list(golden2.read(b.name, after_seq=-1)) for b in branches}
    for name in ("deeper", "side"):
        assert [e.id for e in histories(branches, own)[name]] == [e.id for e in golden2.read(name)]
    assert len(histories(branches, own)["side"]) == 21


def test_a_fork_that_names_an_experiment_but_no_arm_does_not_stop_the_audit() -> None:
    """Hostile: a fork recorded from Python with overrides {"experiment": ...} and nothing else."""
    from replay.audit import audit_report
    from sia_engine.domain.history import fork
    from sia_engine.experiment.table import experiment_names, table_from_records

    log, _, _ = replay(GOLDEN)
    fork(log, "x-base", source="main", at_seq=20, reason="prefix")
    fork(log, "x-arm", source="x-base", at_seq=0, reason="odd", overrides={"experiment": "x", "arm": 3})
    own = {b.name: list(records(log, b.name, own=True)) for b in log.branches()}
    assert experiment_names(own) == []
    page, report = audit_report(log, None)
    assert report.ok and "Branch x-arm" in page and "Experiments" not in page
    from sia_engine.errors import InvalidPayload

    with pytest.raises(InvalidPayload, match="overrides"):  # asked for by name, the arm is refused, saying why
        table_from_records(own, "x")
