#!/bin/sh
# On a GPU machine (device tool), for issue 19: TriMul's timed scorer with the project installed as
# the README installs it (`pip install -e .`, finding 7: every submission came back `blocked: read
# .../tasks/__init__.py`), under the jail's new walls (no capabilities, seccomp with memfd_create
# left on for the GPU, execute rights for Python and the GPU's compilers only, a tmpfs scratch).
# Run from the checkout, with the wheels the machine lacks carried in .whl/ (msgspec, duckdb, ...).
# Prints, per submission: score, failure class, sandbox status, isolation, refusals, reason. The
# second submission forges the result channel and exits at import: until the scorer checks outside
# the submission's process (issue 19, Deliver 2), expect it to score; that is the gap, not a pass.
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
task = TriMul(reps=5)
ep = task.episodes("train")[0]
for name, src in (("correct", good), ("forged result.json, os._exit at import", forged)):
    s = task.score(ep, f"```python\n{src}```")
    out = s.tools[0].outputs
    print(f"{name}: score {s.score} failure {s.failure} sandbox {out.get('sandbox')} isolation {out.get('isolation')} "
          f"blocked {out.get('blocked')} reason {str(out.get('reason', ''))[:300]!r}", flush=True)
PY
