#!/bin/sh
# On a GPU machine (device tool): TriMul as a `sia run` task, end to end. A scripted model
# answers with the correct Triton kernel of tests/fixtures (a wrong, transposed one for some
# prompts); the loop runs one scaffold iteration on real sandboxed GPU scoring, the head is scored
# on the 7 ranked shapes (the experiment's test step), the store verifies; then the benchmark
# script times the same kernel (inputs drawn on the GPU). The machine lacks msgspec, jsonpatch
# and duckdb: their wheels are carried in .whl/.
python3 -m pip install -q --no-deps .whl/msgspec-*.whl .whl/jsonpatch-*.whl .whl/jsonpointer-*.whl .whl/duckdb-*.whl 2>&1 | grep -v WARNING | tail -1
timeout 420 python3 - <<'PY'
import sys, tempfile, time
sys.path.insert(0, ".")
from pathlib import Path
from sia_engine.experiment.arms import evaluate_test
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.domain.integrity import verify_store
from sia_engine.loop.loop import EvalProtocol, Loop, LoopConfig
from sia_engine.models.protocol import ScriptedModel
from store import Store
from tasks.trimul.task import TriMul

good = (Path("tests/fixtures/trimul") / "correct.py").read_text()
old = "tl.store(o_ptr + base + oi[:, None] * N + oj[None, :], acc"
bad = good.replace(old, "tl.store(o_ptr + base + oj[None, :] * N + oi[:, None], acc")
def respond(req, adapter):
    wrong = "N=128," in req.messages[-1].content  # one train shape (128, 1, 768) gets the wrong kernel
    return f"```python\n{bad if wrong else good}```"
task = TriMul(reps=10)
t0 = time.time()
with Store.create(tempfile.mkdtemp()) as s:
    cfg = LoopConfig(task="trimul", levers=("scaffold",), iterations=1, train_episodes=4, val_episodes=7, samples=1,
                     eval=EvalProtocol(mode="greedy"))
    loop = Loop(s, task=task, model=ScriptedModel(respond), feedback=RulePolicy(), config=cfg, branch="main")
    state = loop.run()
    print("loop:", round(time.time() - t0), "s; versions", {v[:12]: (x.status, x.score("val")) for v, x in state.versions.items()})
    import json
    for e in s.log.read("main", kinds=["trajectory_recorded"]):
        p = json.loads(e.payload)
        print(" ", p["split"], p["episode_id"], p["score"], p["failure"], p["metrics"])
    t1 = time.time()
    test = evaluate_test(loop)
    print("test (mean speed-up over the 7 ranked shapes):", test, round(time.time() - t1), "s")
    for e in s.log.read("main", kinds=["trajectory_recorded"]):
        p = json.loads(e.payload)
        if p["split"] == "test":
            print(" ", p["episode_id"], p["score"], {k: round(v, 1) for k, v in p["metrics"].items()})
    for e in s.log.read("main", kinds=["action_taken"]):
        p = json.loads(e.payload)
        if p["actor"] == "tool":
            print("  isolation", p["outputs"].get("isolation"), "status", p["outputs"].get("status"), p["outputs"].get("reason", "")[:200]); break
    print("verify:", verify_store(s.log, s.blobs).ok)
PY
echo "--- bench_trimul_gpu.py (inputs on the GPU)"
# the project is not installed on that machine: the checkout itself is the import path
timeout 150 env PYTHONPATH="$PWD" python3 bench/bench_trimul_gpu.py tests/fixtures/trimul/correct.py --max-reps 10
