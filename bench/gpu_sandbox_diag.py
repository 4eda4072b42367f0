"""Which writable place CUDA needs inside the sandbox (run on a GPU machine through the device tool)."""
import sys
sys.path.insert(0, ".")
import sia_engine.sandbox as sb
code = "import torch\nprint('cuda', torch.cuda.is_available())"
def run(label):
    r = sb.run_python(code, devices=("gpu",), timeout_s=120, memory_mb=16384)
    print(label, "->", r.status, r.stdout.strip(), r.isolation, flush=True)
for extra in (("/proc/driver",), ("/proc/sys",), ("/proc/1",), ("/proc",)):
    sb._WRITE_EXTRA = extra
    run(f"writable {extra}")
