"""A read-only view of only what the code needs, through bubblewrap (Debian's ``bubblewrap``).

Where ``bwrap`` is installed and works, the sandboxed Python starts in a fresh root file system
holding nothing but read-only binds of the read roots (the standard library and each installed
distribution, less any that holds a hidden path; the system's shared libraries; Python's own
folder), a new ``/proc`` and a minimal ``/dev``, and the scratch folder, writable. The task's
data, the store, the project's source and the rest of the host are not hidden by a rule there:
they do not exist. bwrap also gives every namespace (user, PID, network, IPC, UTS, cgroup), drops
every capability and dies with its parent. Landlock, the seccomp filter and the audit hook stay on
inside, as second walls.

Where it is missing (or the kernel refuses it), the sandbox starts through ``unshare`` as before,
and ``isolation`` lacks ``mount-view``. Runs that use a GPU keep ``unshare`` too until the view is
checked on one: ``SIA_SANDBOX_GPU_VIEW=1`` puts them in the view (with the device nodes and the
driver's files), for that check (``bench/gpu_sandbox_check.sh``).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence

__all__ = ["bwrap_program", "view_launcher", "GPU_VIEW_ENV"]

GPU_VIEW_ENV = "SIA_SANDBOX_GPU_VIEW"

_SKIP = ("/proc", "/dev")  # given fresh (``--proc``, ``--dev``), never bound from the host


def _binds(roots: Sequence[str]) -> list[str]:
    out: list[str] = []
    kept: list[str] = []
    for r in sorted(dict.fromkeys(roots)):  # a parent before what lies beneath it, which it already shows
        if r == "/" or r.startswith(tuple(s + "/" for s in _SKIP)) or r in _SKIP or any(r.startswith(k + "/") for k in kept):
            continue
        kept.append(r)
        if os.path.islink(r):  # /lib -> usr/lib on a merged /usr: the same link in the view
            out += ["--symlink", os.readlink(r), r]
        elif os.path.exists(r):
            out += ["--ro-bind", r, r]
    return out


def view_launcher(roots: Sequence[str], scratch: str, program: str | None = None, devices: Sequence[str] = ()) -> list[str] | None:
    """The bwrap command line (to put before the Python command) that shows the code ``roots``
    read-only, ``scratch`` writable and the device nodes ``devices``, and nothing else; None where
    bwrap is missing or fails here."""
    exe = program or bwrap_program()
    if exe is None:
        return None
    nodes = [a for d in devices if os.path.exists(d) for a in ("--dev-bind", d, d)]
    return [exe, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--proc", "/proc", "--dev", "/dev",
            "--tmpfs", "/tmp", *_binds(roots), *nodes, "--bind", scratch, scratch, "--chdir", scratch, "--"]


@functools.lru_cache(maxsize=1)
def bwrap_program() -> str | None:
    """The bwrap executable, when it runs Python in a view here (tried once); else None."""
    exe = shutil.which("bwrap")
    if exe is None:
        return None
    from sia_engine.sandbox.confine import python_programs, read_roots  # noqa: PLC0415 - confine imports nothing of ours

    with tempfile.TemporaryDirectory(prefix="sia-view-probe-") as d:
        argv = view_launcher([*read_roots(()), *python_programs()], os.path.realpath(d), program=exe)
        assert argv is not None
        try:
            ok = subprocess.run([*argv, sys.executable, "-I", "-c", "import json"], capture_output=True, timeout=30).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    return exe if ok else None
