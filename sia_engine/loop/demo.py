"""A synthetic sample history: what ``sia demo`` records to show the log at work.

No model runs here: outputs and scores come from a seeded ``random.Random``, and the "adapter"
is a small pair of random LoRA-shaped matrices stored as a real safetensors blob. Every event
goes through the same recording path as a real run (reducer-checked, blobs durable first), so
the history verifies, rebuilds, forks and rolls back like one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np

from sia_engine.domain.events import (
    ActionTaken,
    AdapterCheckpointed,
    Event,
    FeedbackVerdict,
    ModelRef,
    RolledBack,
    RunStarted,
    ScaffoldPatched,
    TrainingPlan,
    TrajectoryRecorded,
    VersionAccepted,
    VersionEvaluated,
    VersionRejected,
)
from sia_engine.domain.history import History, fork
from sia_engine.domain.scaffold import PatchOp, Scaffold, apply_patch, scaffold_hash
from sia_engine.domain.state import Version, version_id
from store import Store

__all__ = ["record_sample_history", "DEMO_BASE_MODEL"]

DEMO_BASE_MODEL = ModelRef(id="synthetic/none", revision="demo", weights_hash="")
INITIAL_SCORE = 0.30


def record_sample_history(
    store: Store,
    *,
    branch: str = "main",
    iterations: int = 4,
    episodes: int = 4,
    seed: int = 0,
    engine_version: str = "0",
    on_step: Callable[[str], None] | None = None,
) -> History:
    """Record a synthetic improvement history on ``branch`` (created if missing), fork it once
    and roll the fork back; returns the main history."""
    rng = random.Random(seed)
    say = on_step or (lambda _msg: None)
    hist = _start(store, branch, seed=seed, iterations=iterations, episodes=episodes, engine_version=engine_version)
    say("run started")
    head_score = INITIAL_SCORE
    fork_at: int | None = None
    for it in range(iterations):
        head = hist.state.head_version
        assert head is not None
        traj_ids = _record_episodes(hist, rng, it, episodes, head.version_id)
        lever = "scaffold" if it % 2 == 0 else "weights"
        if lever == "scaffold":
            vid = _record_scaffold_candidate(hist, it, head, traj_ids)
        else:
            vid = _record_weights_candidate(store, hist, it, head, traj_ids, seed)
        say(f"iteration {it}: {lever} candidate {vid[:12]}")
        score = round(head_score + rng.uniform(-0.1, 0.2), 4)
        head_score = _record_decision(hist, it, vid, head.version_id, score, head_score, episodes, say)
        if fork_at is None:
            fork_at = store.log.branch(branch).head_seq
    if fork_at is not None:
        _fork_and_roll_back(store, branch, fork_at, say)
    return hist


def _start(store: Store, branch: str, *, seed: int, iterations: int, episodes: int, engine_version: str) -> History:
    """The branch's history (the branch created if missing), its run started."""
    if branch not in {b.name for b in store.log.branches()}:
        store.log.init_branch(branch)
    hist = History.open(store.log, branch, blobs=store.blobs, snapshot_every=20)
    scaffold = Scaffold(system_prompt="Answer with one word.")
    hist.record(
        RunStarted(
            run_id=f"demo-{seed}",
            task="demo/synthetic",
            seed=seed,
            base_model=DEMO_BASE_MODEL,
            scaffold=scaffold,
            engine_version=engine_version,
            levers=("scaffold", "weights"),
            config={"iterations": iterations, "episodes": episodes, "synthetic": True},
        ),
        # the initial version's score, as a run records it first: every gate decision compares with a recorded score
        VersionEvaluated(version_id=version_id(DEMO_BASE_MODEL, scaffold, None), split="val", score=INITIAL_SCORE, n_episodes=episodes),
    )
    return hist


def _record_episodes(hist: History, rng: random.Random, it: int, episodes: int, head: str) -> list[str]:
    """One drawn output and its trajectory per episode, recorded together; the trajectory ids."""
    events: list[Event] = []
    traj_ids = []
    for ep in range(episodes):
        aid, tid = f"it{it}-ep{ep}-gen", f"it{it}-ep{ep}"
        out = rng.choice(["yes", "no", "maybe", "Yes."])
        events.append(
            ActionTaken(
                action_id=aid, episode_id=f"ep{ep}", version_id=head, actor="model",
                name="generate", inputs={"prompt": f"question {ep}"}, outputs={"text": out},
            )
        )
        events.append(
            TrajectoryRecorded(
                trajectory_id=tid, episode_id=f"ep{ep}", split="train", version_id=head,
                output=out, score=float(out in ("yes", "no")), action_ids=(aid,),
            )
        )
        traj_ids.append(tid)
    hist.record(*events)
    return traj_ids


def _record_scaffold_candidate(hist: History, it: int, head: Version, traj_ids: list[str]) -> str:
    """A verdict for the scaffold and the patch it asks for; the candidate's version id."""
    ops = (PatchOp("add", "/examples/-", {"input": f"question {it}", "output": "yes"}),)
    new_scaffold = apply_patch(head.scaffold, ops)
    vid = version_id(DEMO_BASE_MODEL, new_scaffold, head.adapter)
    hist.record(
        FeedbackVerdict(version_id=head.version_id, lever="scaffold", rationale="outputs break the one-word format", policy="demo", evidence=tuple(traj_ids), patch=ops),
        ScaffoldPatched(parent_version=head.version_id, version_id=vid, ops=ops, scaffold_hash=scaffold_hash(new_scaffold)),
    )
    return vid


def _record_weights_candidate(store: Store, hist: History, it: int, head: Version, traj_ids: list[str], seed: int) -> str:
    """A verdict for the weights and a random LoRA-shaped adapter (a real blob); the candidate's version id."""
    nprng = np.random.default_rng(seed * 1000 + it)
    blob = store.blobs.put_tensors(
        {"lora_A": nprng.standard_normal((4, 16)).astype(np.float32), "lora_B": np.zeros((16, 4), np.float32)},
        metadata={"synthetic": "true"},
    )
    vid = version_id(DEMO_BASE_MODEL, head.scaffold, blob)
    hist.record(
        FeedbackVerdict(version_id=head.version_id, lever="weights", rationale="content errors persist", policy="demo", evidence=tuple(traj_ids), training_plan=TrainingPlan(tuple(traj_ids))),
        AdapterCheckpointed(parent_version=head.version_id, version_id=vid, blob=blob, peft_config={"r": 4, "synthetic": True}, training_data=tuple(traj_ids), seed=seed, parent_adapter=head.adapter),
    )
    return vid


def _record_decision(hist: History, it: int, vid: str, head: str, score: float, head_score: float, episodes: int,
                     say: Callable[[str], None]) -> float:
    """The candidate's evaluation and the gate's decision; the head's score afterwards."""
    hist.record(VersionEvaluated(version_id=vid, split="val", score=score, n_episodes=episodes))
    if score > head_score:
        hist.record(VersionAccepted(version_id=vid, previous=head, score=score, previous_score=head_score, margin=0.0))
        say(f"iteration {it}: accepted ({score:.3f})")
        return score
    hist.record(VersionRejected(version_id=vid, head=head, score=score, head_score=head_score, reason="no better than the head"))
    say(f"iteration {it}: rejected ({score:.3f} <= {head_score:.3f})")
    return head_score


def _fork_and_roll_back(store: Store, branch: str, fork_at: int, say: Callable[[str], None]) -> None:
    """Fork ``BRANCH-whatif`` at ``fork_at`` (once) and roll the fork back to an earlier head."""
    fork_name = f"{branch}-whatif"
    if fork_name not in {b.name for b in store.log.branches()}:
        alt = fork(store.log, fork_name, source=branch, at_seq=fork_at, reason="demo: try another path", blobs=store.blobs)
        say(f"forked {fork_name} at {branch}#{fork_at}")
        earlier = [v for v in alt.state.head_history[:-1] if v != alt.state.head]
        if earlier:
            assert alt.state.head is not None
            alt.record(RolledBack(to_version=earlier[-1], from_version=alt.state.head, reason="demo: roll back"))
            say(f"rolled {fork_name} back to {earlier[-1][:12]}")
