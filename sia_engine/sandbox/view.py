"""A read-only view of only what the code needs, through bubblewrap (Debian's ``bubblewrap``).

Where ``bwrap`` is installed and works, the sandboxed Python starts in a fresh root file system
holding nothing but read-only binds of the read roots (the standard library and each installed
distribution; the system's shared libraries; Python's own folder), a new ``/proc`` and a minimal
``/dev``, and the scratch folder, writable. A distribution that holds a hidden path, and every
``.pth`` file, show empty: a folder bound whole has them covered (``_whole_folders``). The task's
data, the store, the project's source and the rest of the host are not hidden by a rule there:
their files do not exist. bwrap also gives every namespace (user, PID, network, IPC, UTS, cgroup), drops
every capability and dies with its parent. Landlock, the seccomp filter and the audit hook stay on
inside, as second walls.

Where it is missing (or the kernel refuses it), the sandbox starts through ``unshare`` as before,
and ``isolation`` lacks ``mount-view``. Runs that use a GPU keep ``unshare`` too until the view is
checked on one: ``SIA_SANDBOX_GPU_VIEW=1`` puts them in the view (with the device nodes and the
driver's files), for that check (``bench/gpu_sandbox_check.sh``).
"""

from __future__ import annotations

import atexit
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


_WHOLE = 16  # a folder with at least this many entries to show is bound whole, the others covered


def _whole_folders(shown: Sequence[str]) -> dict[str, list[str]]:
    """The folders bound whole, each with its entries that are not to be shown (covered).

    Every bind costs bubblewrap a read of the whole mount table, so 575 binds (site-packages and
    the standard library entry by entry) took 0.9 s per start. A folder most of whose entries are
    shown is bound once instead, and each entry it must not show is covered: a folder by an empty
    read-only tmpfs, a file by an empty file. A folder is bound entry by entry as before where an
    entry it must not show is a link or neither file nor folder (it cannot be covered), where an
    entry to show is a link (bound alone it shows its target; in the whole folder it would not),
    or where it cannot be listed."""
    listed = set(shown)
    children: dict[str, list[str]] = {}
    for r in shown:
        children.setdefault(os.path.dirname(r), []).append(r)
    whole: dict[str, list[str]] = {}
    for parent in sorted(children, key=lambda p: p.count(os.sep), reverse=True):  # the deepest first: a folder whole inside one
        if len(children[parent]) < _WHOLE or os.path.islink(parent) or not os.path.isdir(parent):
            continue
        try:
            names = sorted(os.listdir(parent))
        except OSError:
            continue
        covered = []
        for name in names:
            c = os.path.join(parent, name)
            if c in whole:
                continue
            if c in listed:
                if os.path.islink(c):
                    break
                continue
            if os.path.islink(c) or not (os.path.isdir(c) or os.path.isfile(c)) or any(r.startswith(c + os.sep) for r in listed):
                break
            covered.append(c)
        else:
            whole[parent] = covered
    return whole


def _binds(roots: Sequence[str]) -> list[str]:
    shown = [r for r in dict.fromkeys(roots) if r != "/" and r not in _SKIP and not r.startswith(tuple(s + "/" for s in _SKIP))]
    whole = _whole_folders(shown)
    out: list[str] = []
    covers: list[str] = []
    kept: dict[str, bool] = {}  # what is bound: True where bound whole
    for r in sorted({*shown, *whole}):  # a parent before what lies beneath it, which it already shows
        parent = next((k for k in kept if r.startswith(k + "/")), None)
        if parent is not None:
            if r in whole and kept[parent]:
                covers += whole[r]  # a folder whole inside one bound whole: its covers still apply
            continue
        kept[r] = r in whole
        if os.path.islink(r):  # /lib -> usr/lib on a merged /usr: the same link in the view
            out += ["--symlink", os.readlink(r), r]
        elif os.path.exists(r):
            out += ["--ro-bind", r, r]
            covers += whole.get(r, [])
    for c in covers:  # after every bind, over what they show
        out += ["--tmpfs", c, "--remount-ro", c] if os.path.isdir(c) else ["--ro-bind", _empty_file(), c]
    return out


def _empty_file() -> str:
    """An empty, read-only file of this process's own, bound over each file the view must not
    show (made again where a temp cleaner removed it: a missing source would fail every start)."""
    path = _made_empty_file()
    if not os.path.isfile(path) or os.path.islink(path) or os.path.getsize(path):
        _made_empty_file.cache_clear()
        path = _made_empty_file()
    return path


@functools.lru_cache(maxsize=1)
def _made_empty_file() -> str:
    folder = tempfile.mkdtemp(prefix="sia-view-")
    path = os.path.join(folder, "empty")
    with open(path, "wb"):
        pass
    os.chmod(path, 0o444)
    atexit.register(shutil.rmtree, folder, True)
    return path


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
