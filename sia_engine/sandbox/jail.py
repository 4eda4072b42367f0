"""A sandbox for code that an agent writes: a separate Python process in its own network and
PID namespaces, with a wall-time limit, a memory limit, a process limit, a scratch folder as its
only writable place, and reads confined to the Python installation (less any distribution that
holds a hidden path: the task's data) and the scratch folder. Its exit, stdout, stderr and every
refused attempt come back in a ``SandboxResult`` for the log; ``isolation`` says which mechanisms
were in force (Landlock, namespaces, a pids cgroup or RLIMIT_NPROC). How: ``confine`` (the launcher and the read roots) and ``runner`` (the child that confines itself).

The audit hook that records refusals is a guard against accidents, not a boundary (ctypes can
bypass it); the kernel's Landlock rules and the namespaces are the boundary.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from sia_engine.sandbox import runner
from sia_engine.sandbox.confine import (
    GPU_PROGRAMS,
    Cgroup,
    device_reads,
    devices_for,
    libcuda_dir,
    list_roots,
    namespace_launcher,
    read_roots,
)

__all__ = ["SandboxResult", "run_python", "landlock_available"]

Status = Literal["ok", "error", "timeout", "memory", "blocked"]
_MEMORY_EXIT = 86
_BLOCKED_EXIT = 87
_MAX_TEXT = 20_000
_RELAX: tuple[str, ...] = ()  # Landlock parts left off, for diagnosis only ("ioctl", "net", "unix", "signal", "read")
_WRITE_EXTRA: tuple[str, ...] = ()  # more writable places, for diagnosis only
_GRACE_S = 5.0  # after the time limit: how long the killed tree may take to let go of its pipes

_SYS_LANDLOCK_CREATE_RULESET = 444


class SandboxResult(msgspec.Struct, frozen=True):
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    blocked: tuple[str, ...] = ()  # what the code tried and was refused: "read PATH", "write PATH", "network ...", "exec ..."
    landlock: bool = False
    outputs: dict[str, bytes] = {}  # files the caller asked to read back from the scratch folder
    isolation: tuple[str, ...] = ()  # what was in force: landlock, namespaces, pids-cgroup, rlimit-nproc


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_available() -> int:
    """The kernel's Landlock ABI version, 0 when there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    v = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(v), 0)


def _text(data: bytes) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + f"\n... [{len(text) - _MAX_TEXT} more characters]"


def run_python(
    code: str,
    *,
    files: Mapping[str, bytes] | None = None,
    outputs: Sequence[str] = (),
    timeout_s: float = 60.0,
    memory_mb: int = 2048,
    protect: Sequence[str | os.PathLike[str]] = (),
    hidden: Sequence[str | os.PathLike[str]] = (),
    env: Mapping[str, str] | None = None,
    max_procs: int = 32,
    devices: Sequence[str] = (),
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh scratch folder holding ``files``; return what
    happened and the bytes of ``outputs`` (names in the scratch folder) that exist afterwards.

    ``protect``: paths (the store) whose writing is refused and recorded as such. ``hidden``:
    paths (a task's data and held-out splits) the code may not read: an installed distribution
    that holds one is left out of what is readable. ``max_procs`` bounds the processes;
    ``devices`` names device classes the code may use (``"gpu"``). See ``confine`` and ``runner``."""
    abi = landlock_available()
    launcher = namespace_launcher()
    hidden_all = tuple(sorted({os.path.realpath(os.fspath(p)) for p in (*protect, *hidden)}))
    with tempfile.TemporaryDirectory(prefix="sia-sandbox-") as scratch:
        scratch = os.path.realpath(scratch)
        blocked_log = _prepare_scratch(scratch, code, files)
        cfg = _runner_config(scratch, blocked_log, abi, hidden_all, protect, devices)
        child_env = _child_env(scratch, devices, env)
        cgroup = Cgroup(max_procs + 4)  # + unshare and the runner's own
        nproc = None if cgroup.path is not None or os.geteuid() == 0 else _user_processes() + max_procs + 4

        # CUDA reserves far more address space than it uses and fails under RLIMIT_AS (error 304):
        # with the GPU, the memory limit is not applied (said in ``isolation``)
        address_limit = "gpu" not in devices
        setup = _child_setup(memory_mb * 1024 * 1024 if address_limit else None, nproc, cgroup)
        argv = [*(launcher or ()), sys.executable, "-I", "-c", runner.source(), json.dumps(cfg)]

        t0 = time.monotonic()
        try:
            exit_code, out, err, timed_out = _launch(argv, scratch, child_env, setup, timeout_s)
        finally:
            cgroup.remove()
        wall = time.monotonic() - t0
        blocked = tuple(x for x in Path(blocked_log).read_text().splitlines() if x)
        status = _status(timed_out, blocked, exit_code, err)
        got = {n: Path(scratch, n).read_bytes() for n in outputs if Path(scratch, n).is_file()}
        isolation = tuple(x for x, on in (("landlock", bool(abi)), ("namespaces", launcher is not None),
                                          ("pids-cgroup", cgroup.path is not None), ("rlimit-nproc", nproc is not None),
                                          ("rlimit-as", address_limit)) if on)
        return SandboxResult(status, None if timed_out else exit_code, _text(out), _text(err), round(wall, 3), blocked, bool(abi), got, isolation)


def _prepare_scratch(scratch: str, code: str, files: Mapping[str, bytes] | None) -> str:
    """Write ``files`` and ``main.py`` into the scratch folder; the (empty) refusal log's path."""
    for name, data in (files or {}).items():
        Path(scratch, name).write_bytes(data)
    Path(scratch, "main.py").write_text(code)
    blocked_log = os.path.join(scratch, ".blocked")
    Path(blocked_log).touch()
    return blocked_log


def _runner_config(scratch: str, blocked_log: str, abi: int, hidden_all: tuple[str, ...],
                   protect: Sequence[str | os.PathLike[str]], devices: Sequence[str]) -> dict[str, object]:
    """What the child runner (``sandbox.runner``) confines itself with, as JSON-ready values."""
    return {"scratch": scratch, "read": list(read_roots(hidden_all)) + device_reads(devices), "list": list(list_roots()), "protected": [os.fspath(p) for p in protect],
            "blocked_log": blocked_log, "landlock": abi, "devices": devices_for(devices), "relax": list(_RELAX), "write_extra": list(_WRITE_EXTRA),
            "programs": list(GPU_PROGRAMS) if "gpu" in devices else [], "memory_exit": _MEMORY_EXIT, "blocked_exit": _BLOCKED_EXIT}


def _child_env(scratch: str, devices: Sequence[str], env: Mapping[str, str] | None) -> dict[str, str]:
    """The child's whole environment: a PATH, the scratch folder as home and temp, ``env`` on top."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "TMPDIR": scratch,
        "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": scratch,
        "TRITON_CACHE_DIR": os.path.join(scratch, ".triton"),
        **({"TRITON_LIBCUDA_PATH": lib} if "gpu" in devices and (lib := libcuda_dir()) else {}),
        **(env or {}),
    }


def _child_setup(address_limit: int | None, nproc: int | None, cgroup: Cgroup) -> Callable[[], None]:
    """What runs in the child between fork and exec: its own session, the limits, the cgroup."""

    def setup() -> None:
        os.setsid()
        if address_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        cgroup.join()

    return setup


def _launch(argv: list[str], scratch: str, child_env: Mapping[str, str], setup: Callable[[], None],
            timeout_s: float) -> tuple[int | None, bytes, bytes, bool]:
    """Run ``argv`` to its end or to the time limit: (exit code, stdout, stderr, timed out)."""
    proc = subprocess.Popen(
        argv, cwd=scratch, env=child_env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, preexec_fn=setup,  # noqa: PLW1509 - the limits must be set in the child
    )
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # unshare dies, its child (the namespace's init) with it, then all
    try:
        out, err = proc.communicate(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:  # without namespaces an escaped process may hold the pipes
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        proc.wait()
        out, err = b"", b"sandbox: output lost: a process that left the sandbox's group kept its pipes open\n"
    return proc.returncode, out, err, True


def _status(timed_out: bool, blocked: tuple[str, ...], exit_code: int | None, err: bytes) -> Status:
    """How the run ended, from the first that holds: timeout, blocked, memory, ok, error."""
    if timed_out:
        return "timeout"
    if blocked or exit_code == _BLOCKED_EXIT:
        return "blocked"
    if exit_code == _MEMORY_EXIT or (exit_code is not None and exit_code < 0 and b"MemoryError" in err):
        return "memory"
    if exit_code == 0:
        return "ok"
    return "error"


def _user_processes() -> int:
    """Processes this user runs now (RLIMIT_NPROC counts them all)."""
    uid = os.getuid()
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n
