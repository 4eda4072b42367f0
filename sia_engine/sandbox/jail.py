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

import contextlib
import ctypes
import ctypes.util
import functools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from sia_engine.errors import SiaError
from sia_engine.sandbox import runner
from sia_engine.sandbox.channel import CHANNEL_ENV, Channel, talking
from sia_engine.sandbox.confine import (
    GPU_PROGRAMS,
    Cgroup,
    device_reads,
    devices_for,
    libcuda_dir,
    list_roots,
    namespace_launcher,
    python_programs,
    read_roots,
)
from sia_engine.sandbox.readback import MAX_TEXT, Capped, SandboxCleanupError, drain, read_outputs, refusal_lines, remove_tree
from sia_engine.sandbox.view import GPU_VIEW_ENV, view_launcher

__all__ = ["SandboxResult", "SandboxCleanupError", "WeakSandbox", "run_python", "landlock_available", "seccomp_library", "missing_walls",
           "STRONG_WALLS", "ALLOW_WEAK_ENV"]

Status = Literal["ok", "error", "timeout", "memory", "blocked"]
_MEMORY_EXIT = 86
_BLOCKED_EXIT = 87
_MAX_REFUSALS = 64 << 10  # bytes of refusal lines kept
_RELAX: tuple[str, ...] = ()  # Landlock parts left off, for diagnosis only ("ioctl", "net", "unix", "signal", "read")
_WRITE_EXTRA: tuple[str, ...] = ()  # more writable places, for diagnosis only

_SYS_LANDLOCK_CREATE_RULESET = 444


STRONG_WALLS = ("landlock", "namespaces", "seccomp")  # without any of them, model-written code is not run unless allowed
ALLOW_WEAK_ENV = "SIA_ALLOW_WEAK_SANDBOX"  # "1": run it anyway (`--allow-weak-sandbox`); isolation records what was missing


class WeakSandbox(SiaError):
    """The jail cannot start here with every wall, and the code to run is the model's."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        super().__init__(
            f"the sandbox cannot start here with all its walls ({', '.join(missing)} missing), and model-written code is not run "
            "in a weaker one. Install what is missing (landlock: Linux 5.13 or later with Landlock enabled; namespaces: "
            "util-linux `unshare`, and user namespaces when not root; seccomp: Debian `libseccomp2`), or pass "
            "--allow-weak-sandbox to run it anyway (each tool event's `isolation` then records what was in force)")


def missing_walls() -> tuple[str, ...]:
    """The strong walls this machine cannot raise (empty: all of them)."""
    have = {"landlock": bool(landlock_available()), "namespaces": namespace_launcher() is not None, "seccomp": seccomp_library() is not None}
    return tuple(w for w in STRONG_WALLS if not have[w])


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


@functools.lru_cache(maxsize=1)
def seccomp_library() -> str | None:
    """The path of libseccomp, whose filter the runner installs (None: not installed here, and
    ``isolation`` says the sandbox ran without one)."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        return name if hasattr(lib, "seccomp_rule_add_array") else None
    except OSError:
        return None


def landlock_available() -> int:
    """The kernel's Landlock ABI version, 0 when there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    v = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(v), 0)


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
    max_output_bytes: int = 64 << 20,
    max_file_bytes: int = 1 << 30,
    disk_mb: int = 2048,
    untrusted: bool = True,
    talk: Callable[[Channel], None] | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh scratch folder holding ``files``; return what happened and the bytes of ``outputs``
    (names in the scratch folder) that exist afterwards. ``protect``: paths (the store) whose writing is refused and recorded as
    such. ``hidden``: paths (a task's data and held-out splits) the code may not read: an installed distribution that holds one is
    left out of what is readable. ``max_procs`` bounds the processes; ``devices`` names device classes the code may use (``"gpu"``).
    An output is read back only if it is a regular file (never through a symlink) of at most ``max_output_bytes`` (else refused, and
    recorded); no file may exceed ``max_file_bytes`` (RLIMIT_FSIZE); stdout and stderr are kept up to ``MAX_TEXT`` characters each
    as they are read, the rest counted. ``untrusted`` code (the model's) is refused (``WeakSandbox``) where a strong wall is
    missing, unless allowed (``ALLOW_WEAK_ENV``). ``talk``: the caller's part of a live channel with the code (``channel``), run
    beside it in a thread and ended before this returns. See ``confine``, ``runner``, ``readback``."""
    if untrusted and (missing := missing_walls()) and os.environ.get(ALLOW_WEAK_ENV) != "1":
        raise WeakSandbox(missing)
    abi = landlock_available()
    launcher = namespace_launcher()
    hidden_all = tuple(sorted({os.path.realpath(os.fspath(p)) for p in (*protect, *hidden)}))
    with _scratch_folder(disk_mb) as (scratch, sized), _refusal_pipe() as refusals, talking(talk) as (channel_fd, start_talk, end_talk):
        _prepare_scratch(scratch, code, files)
        cfg = _runner_config(scratch, refusals[1], abi, hidden_all, protect, devices)
        child_env = {**_child_env(scratch, devices, env), **({CHANNEL_ENV: str(channel_fd)} if channel_fd is not None else {})}
        # CUDA reserves far more address space than it uses and fails under RLIMIT_AS (error 304):
        address_limit = "gpu" not in devices  # with the GPU, no memory limit (said in ``isolation``)
        view = _view(cfg, scratch, devices)
        argv = [*(view or launcher or ()), sys.executable, "-I", "-c", runner.source(), json.dumps(cfg)]
        t0 = time.monotonic()
        cgroup = Cgroup(max_procs + 4)  # + unshare and the runner's own
        try:
            nproc = None if cgroup.path is not None or os.geteuid() == 0 else _user_processes() + max_procs + 4
            setup = _child_setup(memory_mb * 1024 * 1024 if address_limit else None, nproc, cgroup, max_file_bytes)
            exit_code, out, err, refused, timed_out = _launch(argv, scratch, child_env, setup, timeout_s, refusals, channel_fd, start_talk)
        finally:
            cgroup.remove()
        end_talk()  # the processes have ended: what the code did not say by now it never will
        exit_code = _signalled(exit_code) if view is not None else exit_code
        wall = time.monotonic() - t0
        got, unread = read_outputs(scratch, outputs, max_output_bytes)
        status = _status(timed_out, blocked := (*refusal_lines(refused), *unread), exit_code, err.head)
        walls = {"landlock": bool(abi), "namespaces": bool(view or launcher), "mount-view": view is not None, "seccomp": seccomp_library() is not None,
                 "pids-cgroup": cgroup.path is not None, "rlimit-nproc": nproc is not None, "rlimit-as": address_limit,
                 "rlimit-fsize": True, "scratch-tmpfs": sized}
        return SandboxResult(status, None if timed_out else exit_code, out.text(), err.text(), round(wall, 3), blocked, bool(abi), got,
                             tuple(k for k, on in walls.items() if on))


def _view(cfg: Mapping[str, object], scratch: str, devices: Sequence[str]) -> list[str] | None:
    """bubblewrap's read-only view where it runs (it gives the namespaces too); None: unshare's
    namespaces. With a GPU only for its check (``GPU_VIEW_ENV``), until the view is checked on one."""
    if devices and os.environ.get(GPU_VIEW_ENV) != "1":
        return None
    return view_launcher([*cfg["read"], *python_programs()], scratch, devices=devices_for(devices))  # type: ignore[misc]


def _signalled(code: int | None) -> int | None:
    """bwrap exits 128 + n for a child killed by signal n: said as subprocess (and unshare) say it, -n."""
    return 128 - code if code is not None and code > 128 else code


@contextlib.contextmanager
def _scratch_folder(disk_mb: int) -> Iterator[tuple[str, bool]]:
    """A fresh scratch folder (on a tmpfs of ``disk_mb`` where it can be mounted), removed after."""
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="sia-sandbox-"))
    sized = False
    try:
        sized = _mount_scratch(scratch, disk_mb)  # all the code may write, in all
        yield scratch, sized
    finally:
        if sized:
            _unmount_scratch(scratch)
        remove_tree(scratch)


@contextlib.contextmanager
def _refusal_pipe() -> Iterator[list[int]]:
    """The pipe the child sends its refusals down: [read end, write end]. ``_launch`` closes the
    write end once the child has it (and sets it to -1); what is still open is closed after."""
    fds = list(os.pipe())
    try:
        yield fds
    finally:
        for fd in fds:
            if fd >= 0:
                os.close(fd)


def _mount_scratch(scratch: str, disk_mb: int) -> bool:
    """A tmpfs of ``disk_mb`` over the scratch folder (as root): what the code writes is bounded
    in all, and goes with the unmount whatever it is. False where it cannot be mounted (not root,
    or a container without CAP_SYS_ADMIN): then only RLIMIT_FSIZE bounds a file, said in ``isolation``."""
    if os.geteuid() != 0:
        return False
    opts = f"size={int(disk_mb)}m,mode=0700".encode()
    return bool(_libc().mount(b"tmpfs", os.fsencode(scratch), b"tmpfs", ctypes.c_ulong(0x2 | 0x4), opts) == 0)  # MS_NOSUID | MS_NODEV


def _unmount_scratch(scratch: str) -> None:
    libc = _libc()
    if libc.umount2(os.fsencode(scratch), 2) != 0:  # MNT_DETACH: at once, even if a stray process still holds a file there
        err = ctypes.get_errno()
        raise SandboxCleanupError(scratch, f"its tmpfs could not be unmounted ({os.strerror(err)})")


def _prepare_scratch(scratch: str, code: str, files: Mapping[str, bytes] | None) -> None:
    """Write ``files`` and ``main.py`` into the scratch folder."""
    for name, data in (files or {}).items():
        Path(scratch, name).write_bytes(data)
    Path(scratch, "main.py").write_text(code)


def _runner_config(scratch: str, refusals_fd: int, abi: int, hidden_all: tuple[str, ...],
                   protect: Sequence[str | os.PathLike[str]], devices: Sequence[str]) -> dict[str, object]:
    """What the child runner (``sandbox.runner``) confines itself with, as JSON-ready values."""
    return {"scratch": scratch, "read": list(read_roots(hidden_all)) + device_reads(devices), "list": list(list_roots()), "protected": [os.fspath(p) for p in protect], "hidden": list(hidden_all),
            "refusals_fd": refusals_fd, "seccomp": seccomp_library(), "python_exec": list(python_programs()), "landlock": abi, "devices": devices_for(devices), "relax": list(_RELAX), "write_extra": list(_WRITE_EXTRA),
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


def _child_setup(address_limit: int | None, nproc: int | None, cgroup: Cgroup, file_limit: int) -> Callable[[], None]:
    """What runs in the child between fork and exec: its own session, the limits, the cgroup."""

    def setup() -> None:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))
        if address_limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (address_limit, address_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        cgroup.join()

    return setup


def _launch(argv: list[str], scratch: str, child_env: Mapping[str, str], setup: Callable[[], None], timeout_s: float,
            refusals: list[int], channel_fd: int | None = None,
            started: Callable[[], None] = lambda: None) -> tuple[int | None, Capped, Capped, Capped, bool]:
    """Run ``argv`` to its end or to the time limit, reading stdout, stderr and the refusals pipe
    as they come, each kept up to its cap: (exit code, stdout, stderr, refusals, timed out).
    ``channel_fd`` is passed on too; ``started`` is called once the process runs."""
    try:
        proc = subprocess.Popen(
            argv, cwd=scratch, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(refusals[1], *(() if channel_fd is None else (channel_fd,))),
            preexec_fn=setup,  # noqa: PLW1509 - the limits must be set in the child
        )
    finally:
        os.close(refusals[1])  # the parent's copy: the pipe ends when the sandbox's processes have all let go of it
        refusals[1] = -1
    started()
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout_s

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    try:
        caps = {proc.stdout.fileno(): Capped(4 * MAX_TEXT), proc.stderr.fileno(): Capped(4 * MAX_TEXT), refusals[0]: Capped(_MAX_REFUSALS)}
        timed_out = drain(caps, deadline, kill)
        out, err, refused = caps.values()
        if timed_out is None:  # without namespaces an escaped process may hold the pipes
            err.add(b"\nsandbox: output cut: a process that left the sandbox's group kept its pipes open\n")
        try:  # the pipes can end (closed by the code) long before the process does
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            kill()
            timed_out = True
        return proc.wait(), out, err, refused, timed_out is not False
    finally:
        if proc.returncode is None:  # an exception on the way: nothing is left running
            kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            f.close()


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
