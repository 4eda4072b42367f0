"""The model Feedback Agent measured: valid verdicts, agreement with the rule policy, and the head
it reaches, against the rule policy run the same way.

    python bench/bench_feedback.py                                  # arith and scrna-denoise, 10 iterations, 3 seeds
    python bench/bench_feedback.py --tasks arith --seeds 1 --iterations 3 --model tiny   # a quick look

For each task and seed, the engine's own loop runs ``--iterations`` iterations twice from the
same start, once with ``--feedback llm`` (the default model choosing among valid options by its
own log-likelihood, ``sia_engine.loop.feedback.model``) and once with ``--feedback rule``, each in its own
store. Printed per task: the share of the llm runs' verdicts that are valid model verdicts (no
fallback exists; the target is all), how often its lever equals the rule policy's verdict on the
same iteration (recorded in each verdict), how often the tie rule decided a stage, and the head's validation score reached by each policy per
seed (the same evaluation protocol and seeds). Per run, the wall time and the part of it the
Feedback Agent spent deciding (from the log: each iteration's last other event to its verdict). Whatever it shows is the result.

With ``--store DIR`` the stores are kept, and a later call with the same ``DIR`` resumes each run
from its log (the engine's own resume: a finished run is read back, not run again, and a run
recorded with other settings is refused), so seeds can be added one call at a time. A run read
back reports the wall time its log recorded (first to last event).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sia_engine.domain.events import ActionTaken, FeedbackVerdict, decode_envelope


def run_one(root: Path, task_name: str, model, policy: str, seed: int, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from sia_engine.loop.feedback.model import LLMPolicy
    from sia_engine.loop.feedback.rule import RulePolicy
    from sia_engine.loop.loop import Loop, LoopConfig
    from sia_engine.loop.registry import get_task
    from sia_engine.models.protocol import LoraSettings
    from store import Store

    task = get_task(task_name, protect=(str(root),))
    cfg = LoopConfig(task=task_name, seed=seed, iterations=args.iterations, feedback=policy, train_episodes=args.train_episodes,  # type: ignore[arg-type]
                     val_episodes=args.val_episodes, samples=args.samples, lora=LoraSettings(steps=args.lora_steps))
    path = root / f"{task_name}-{policy}-s{seed}"
    t0 = time.perf_counter()
    with (Store.open(path) if (path / "log.duckdb").is_file() else Store.create(path)) as s:
        before = [e.recorded_at for e in s.log.read("main")] if any(b.name == "main" for b in s.log.branches()) else []
        agent = LLMPolicy(model) if policy == "llm" else RulePolicy()
        state = Loop(s, task=task, model=model, feedback=agent, config=cfg).run()
        events = [(env.recorded_at, decode_envelope(env)) for env in s.log.read("main")]
    recorded = [at for at, _ in events]
    verdicts = [e for _, e in events if isinstance(e, FeedbackVerdict)]
    decide_s, last = 0.0, None  # the Feedback Agent's time: from the iteration's last other event to its verdict
    for at, e in events:
        if isinstance(e, FeedbackVerdict) and last is not None:
            decide_s += (at - last).total_seconds()
        elif not (isinstance(e, ActionTaken) and e.name.startswith("feedback-")):
            last = at
    # time spent: this call's, plus what the log recorded for the part run before (a resumed run)
    wall = time.perf_counter() - t0 + ((before[-1] - before[0]).total_seconds() if len(before) > 1 else 0.0)
    resumed = ("" if not before else "finished before: read back from its store" if len(before) == len(recorded)
               else f"resumed at event {len(before)} of {len(recorded)}")
    head = state.head_version
    assert head is not None
    initial = state.ordered_versions()[0].score("val")
    return {"head": head.score("val"), "initial": initial, "verdicts": verdicts,
            "accepted": sum(1 for v in state.ordered_versions() if v.status == "accepted") - 1, "wall_s": wall, "decide_s": decide_s, "resumed": resumed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="arith,scrna-denoise")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train-episodes", type=int, default=8)
    ap.add_argument("--val-episodes", type=int, default=4)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--lora-steps", type=int, default=8)
    ap.add_argument("--store", default=None, help="keep the stores here (default: a temporary folder)")
    args = ap.parse_args()
    from sia_engine.models.presets import load_model

    model = load_model(args.model, device="cpu")
    root = Path(args.store or tempfile.mkdtemp(prefix="bench-feedback-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"model {args.model}; {args.iterations} iterations, seeds 0..{args.seeds - 1}; stores in {root}", flush=True)
    for task_name in args.tasks.split(","):
        rows = {}
        for seed in range(args.seeds):
            for policy in ("llm", "rule"):
                rows[(policy, seed)] = r = run_one(root, task_name, model, policy, seed, args)
                print(f"  {task_name} seed {seed} {policy}: head val {r['head']:.3f} (initial {r['initial']:.3f}), "
                      f"{r['accepted']} accepted, {r['wall_s']:.0f} s (deciding {r['decide_s']:.0f} s)" + (f" ({r['resumed']})" if r["resumed"] else ""), flush=True)
        llm = [v for seed in range(args.seeds) for v in rows[("llm", seed)]["verdicts"]]
        valid = sum(1 for v in llm if v.valid and v.policy == "llm" and v.choice)
        same_lever = sum(1 for v in llm if v.choice and v.lever == v.choice.get("rule_verdict"))
        ties = sum(1 for v in llm for st in v.choice.get("stages", []) if len(st.get("tied", [])) > 1)
        n_stages = sum(len(v.choice.get("stages", [])) for v in llm)
        levers = {k: sum(1 for v in llm if v.lever == k) for k in ("scaffold", "weights", "none")}
        print(f"\n{task_name}: {len(llm)} llm verdicts: {valid} valid model verdicts ({valid / max(len(llm), 1):.0%}); "
              f"lever equal to the rule policy's on the same iteration: {same_lever} ({same_lever / max(len(llm), 1):.0%}); "
              f"ties decided by the tie rule: {ties} of {n_stages} stages; levers chosen: {levers}")
        print(f"{'seed':>4} {'llm head':>9} {'rule head':>10} {'initial':>8}")
        for seed in range(args.seeds):
            a, b = rows[("llm", seed)], rows[("rule", seed)]
            print(f"{seed:>4} {a['head']:>9.3f} {b['head']:>10.3f} {a['initial']:>8.3f}")
        ma = statistics.fmean(rows[("llm", s)]["head"] for s in range(args.seeds))
        mb = statistics.fmean(rows[("rule", s)]["head"] for s in range(args.seeds))
        print(f"mean {ma:>9.3f} {mb:>10.3f}\n", flush=True)


if __name__ == "__main__":
    main()
