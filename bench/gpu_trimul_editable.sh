#!/bin/sh
# On a GPU machine (device tool), for issue 19: TriMul's judged scorer with the project installed as
# the README installs it (`pip install -e .`, finding 7: every submission came back `blocked: read
# .../tasks/__init__.py`), under the jail's walls (no capabilities, seccomp with memfd_create left on
# for the GPU, execute rights for Python and the GPU's compilers only, a tmpfs scratch).
# Run from the checkout, with the wheels the machine lacks carried in .whl/ (msgspec, duckdb, ...).
# Prints, per submission: score, failure class, sandbox status, the judge's clock figures and reason.
# Expected: the correct kernel scores a speed-up with failure none and its unexplained time and
# pick wait near the reference's (this calibrates the allowance: if an honest kernel comes out
# tampering, the allowance is too tight for this GPU); every cheat scores 0: the forged result file
# and the early exit `tampering`, the pointer cache `content`, the side-stream kernel and the
# lazily computed picks `tampering` (the side stream only where its hidden work exceeds the allowance).
python3 -m pip install -q --no-deps .whl/*.whl 2>&1 | grep -v WARNING | tail -1
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v WARNING | tail -1
here=$(pwd)
cd /tmp && timeout 500 python3 - "$here" <<'PY'
import sys
from pathlib import Path

from tasks.trimul.task import TriMul

root = Path(sys.argv[1])
good = (root / "tests" / "fixtures" / "trimul" / "correct.py").read_text()
forged = ("import json, os\njson.dump({'status': 'ok', 'ref_us': 1e6, 'sub_us': 1.0, 'reps': 3}, open('result.json', 'w'))\n"
          "os._exit(0)\n\ndef custom_kernel(data):\n    return data[0]\n")
cache = good.replace("def custom_kernel(data):", "_C = {}\ndef custom_kernel(data):\n    p = data[0].data_ptr()\n"
                     "    if p not in _C:\n        _C[p] = _kernel(data)\n    return _C[p]\ndef _kernel(data):")
side = good.replace("def custom_kernel(data):", "_S = None\ndef custom_kernel(data):\n    global _S\n    _S = _S or torch.cuda.Stream()\n"
                    "    _S.wait_stream(torch.cuda.current_stream())\n    with torch.cuda.stream(_S):\n        return _kernel(data)\ndef _kernel(data):")
lazy = good.replace("def custom_kernel(data):", "_last = []\ndef custom_kernel(data):\n    _last[:] = [data]\n"
                    "    return torch.zeros(data[0].shape, device=data[0].device)\ndef _kernel(data):") + '''
import inside
_serve = inside._serve
def _late(op, m, t, state, timed, shape, say):
    if op in ("pick", "save"):
        state["out"] = _kernel(_last[0])
        torch.cuda.synchronize()
    return _serve(op, m, t, state, timed, shape, say)
inside._serve = _late
'''
task = TriMul(reps=10)
for ep in (task.episodes("train")[0], task.episodes("test")[4]):
    print("episode", ep.id, ep.meta, flush=True)
    for name, src in (("correct", good), ("forged result.json, os._exit at import", forged), ("cache by pointer", cache),
                      ("work on a side stream", side), ("picks computed lazily", lazy)):
        s = task.score(ep, f"```python\n{src}```")
        o = s.tools[0].outputs
        clock = {k: round(o[k], 1) for k in ("ref_us", "sub_us", "ref_unexplained_us", "sub_unexplained_us", "ref_pick_us", "sub_pick_us")
                 if isinstance(o.get(k), float)}
        print(f"  {name}: score {s.score} failure {s.failure} sandbox {o.get('sandbox')} calls {o.get('calls')} {clock} "
              f"blocked {o.get('blocked')} reason {str(o.get('reason', ''))[:300]!r}", flush=True)
print("isolation", o.get("isolation"))
PY
