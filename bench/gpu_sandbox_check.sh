#!/bin/sh
# On a GPU machine (device tool): the sandbox with the GPU (devices=("gpu",)): torch sees CUDA
# inside it, and the TriMul harness compiles and runs a correct Triton kernel for real (no
# interpreter). The machine lacks msgspec and jsonpatch: their wheels are carried in .whl/.
# Then the same in bubblewrap's read-only view (SIA_SANDBOX_GPU_VIEW=1; issue 19): bwrap from the
# machine, or from a carried Debian package (.whl/bubblewrap_*.deb, `apt-get download bubblewrap`).
python3 -m pip install -q --no-deps .whl/msgspec-*.whl .whl/jsonpatch-*.whl .whl/jsonpointer-*.whl 2>&1 | grep -v WARNING | tail -1
if ! command -v bwrap >/dev/null && ls .whl/bubblewrap_*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/bw && dpkg -x .whl/bubblewrap_*.deb /tmp/bw && export PATH="/tmp/bw/usr/bin:$PATH"
fi
for view in 0 1; do
echo "=== SIA_SANDBOX_GPU_VIEW=$view (bwrap: $(command -v bwrap || echo none))"
SIA_SANDBOX_GPU_VIEW=$view python3 - <<'PY'
import sys, time
sys.path.insert(0, ".")
from pathlib import Path
from sia_engine.sandbox.jail import landlock_available, run_python
from sia_engine.sandbox.confine import libcuda_dir, namespace_launcher
print("landlock ABI", landlock_available(), "namespaces", namespace_launcher() is not None, "libcuda", libcuda_dir())
r = run_python("import torch\nprint(torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')",
               devices=("gpu",), timeout_s=120, memory_mb=16384)
print("probe:", r.status, r.stdout.strip(), r.isolation, r.blocked[:20], r.stderr[-1500:])
# Triton builds its launcher with gcc: the same, by hand, with gcc's own messages
r = run_python("import subprocess, sysconfig\nopen('t.c', 'w').write('#include <Python.h>\\nint f(void) { return 1; }\\n')\n"
               "p = subprocess.run(['/usr/bin/gcc', 't.c', '-O3', '-shared', '-fPIC', '-o', 't.so', '-I' + sysconfig.get_paths()['include']],"
               " capture_output=True, text=True)\nprint('gcc exit', p.returncode)\nprint(p.stderr[-1500:])",
               devices=("gpu",), timeout_s=120, memory_mb=16384)
print("gcc:", r.status, r.blocked[:10], r.stdout[-1600:], r.stderr[-800:])
from tasks.trimul import Case, run_submission
cases = [Case(256, 2, 128, False, "normal", 0), Case(256, 2, 128, True, "cauchy", 1)]
res, results = run_submission((Path("tests/fixtures/trimul") / "correct.py").read_text(), cases, interpret=False, timeout_s=300)
print("trimul:", res.status, res.isolation, res.blocked[:20], res.wall_s)
print([(r.correct, r.reason) for r in results])
print(res.stderr[-2000:])
PY
done
