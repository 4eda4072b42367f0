"""Which confinement keeps CUDA from starting in the sandbox, one part relaxed at a time.

    python bench/gpu_sandbox_diag.py          # on a GPU machine (the device tool)

It found (2026-11-26, H200): CUDA needs the PID namespace's own /proc (``--mount-proc``), no
``RLIMIT_AS``, and to truncate files in its own /proc entry. ``run_python`` now does all three.
"""

from __future__ import annotations

import sia_engine.sandbox.jail as sb

CODE = "import torch\nprint('cuda', torch.cuda.is_available())"


def run(label: str) -> None:
    r = sb.run_python(CODE, devices=("gpu",), timeout_s=120, memory_mb=16384)
    print(label, "->", r.status, r.stdout.strip(), r.isolation, r.blocked[:5], flush=True)


def main() -> None:
    run("as configured")
    launcher = sb.namespace_launcher
    sb.namespace_launcher = lambda: None  # type: ignore[assignment]
    run("without namespaces")
    sb.namespace_launcher = launcher
    abi = sb.landlock_available
    sb.landlock_available = lambda: 0  # type: ignore[assignment]
    run("without Landlock")
    sb.landlock_available = abi
    for relax in (("ioctl",), ("unix", "signal"), ("net",), ("read",)):
        sb._RELAX = relax
        run(f"Landlock without {relax}")
    sb._RELAX = ()
    for extra in (("/proc",), ("/dev",), ("/",)):
        sb._WRITE_EXTRA = extra
        run(f"Landlock, also writable: {extra}")
    sb._WRITE_EXTRA = ()


if __name__ == "__main__":
    main()
