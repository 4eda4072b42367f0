"""Bytes per step for ``bench_peers.py``: disk bytes after a run in which an agent's scaffold gains
one few-shot example per step, this log against eventsourcing's SQLite recorder and LangGraph's
SQLite checkpointer (up to 2,000 steps: it stores the whole state per checkpoint)."""

from __future__ import annotations

from pathlib import Path

from bench_peers import BASE, LangGraphPeer, eventsourcing_peer, folder_bytes


def growth_bytes(d: Path, steps: int) -> dict[str, float]:
    """Disk bytes per step while a scaffold gains one few-shot example per step (LangGraph up to
    2,000 steps: it stores the whole state per checkpoint, quadratic in the steps)."""
    from sia_engine.domain.events import (
        RunStarted,
        ScaffoldPatched,
        VersionAccepted,
        VersionEvaluated,
    )
    from sia_engine.domain.history import History
    from sia_engine.domain.scaffold import (
        Example,
        PatchOp,
        Scaffold,
        apply_patch,
        scaffold_hash,
    )
    from sia_engine.domain.state import version_id
    from store import Store

    example = "Q: A man took a phone from a shop without paying. Which charge applies? A: theft. " * 3
    out: dict[str, float] = {}
    g = d / f"growth-{steps}"
    g.mkdir()
    with Store.create(g / "ours") as s:
        s.log.init_branch("main")
        h = History.open(s.log, "main", blobs=s.blobs)
        h.record(RunStarted(run_id="g", task="bench", seed=0, base_model=BASE, scaffold=Scaffold(), engine_version="b", levers=("scaffold",)))
        for i in range(steps):
            head = h.state.head_version
            assert head is not None
            ops = (PatchOp("add", "/examples/-", {"input": f"{example} #{i}", "output": "theft"}),)
            sc = apply_patch(head.scaffold, ops)
            vid = version_id(BASE, sc, None)
            h.record(ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(sc)),
                     VersionEvaluated(version_id=vid, split="val", score=0.5, n_episodes=1),
                     VersionAccepted(version_id=vid, previous=head.version_id, score=0.5, previous_score=None, margin=0.0))
        del Example
    out["sia-engine log"] = folder_bytes(g / "ours") / steps
    es = eventsourcing_peer("SQLite")(g)
    for i in range(steps):
        es.add_example(f"{example} #{i}")
    es.close()
    out["eventsourcing SQLite"] = folder_bytes(g / "es.sqlite") / steps
    if steps > 2000:
        return out
    lg = LangGraphPeer(g)
    for i in range(steps):
        lg.add_example(f"{example} #{i}")
    lg.close()
    out["LangGraph SqliteSaver"] = sum(folder_bytes(p) for p in g.glob("lg.sqlite*")) / steps
    return out
