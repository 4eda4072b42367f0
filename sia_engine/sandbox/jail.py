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
import errno
import functools
import json
import os
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

from sia_engine.errors import SiaError
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

__all__ = ["SandboxResult", "SandboxCleanupError", "run_python", "landlock_available", "read_outputs", "remove_tree", "seccomp_library"]

Status = Literal["ok", "error", "timeout", "memory", "blocked"]
_MEMORY_EXIT = 86
_BLOCKED_EXIT = 87
_MAX_TEXT = 20_000
_MAX_REFUSALS = 64 << 10  # bytes of refusal lines kept
_RELAX: tuple[str, ...] = ()  # Landlock parts left off, for diagnosis only ("ioctl", "net", "unix", "signal", "read")
_WRITE_EXTRA: tuple[str, ...] = ()  # more writable places, for diagnosis only
_GRACE_S = 5.0  # after the time limit: how long the killed tree may take to let go of its pipes

_SYS_LANDLOCK_CREATE_RULESET = 444


class SandboxCleanupError(SiaError):
    """The scratch folder could not be removed after a run."""

    def __init__(self, path: str) -> None:
        super().__init__(f"the sandbox's scratch folder {path} could not be removed (the code left something even root "
                         "cannot delete there); remove it by hand")


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
    max_output_bytes: int = 64 << 20,
    max_file_bytes: int = 1 << 30,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh scratch folder holding ``files``; return what
    happened and the bytes of ``outputs`` (names in the scratch folder) that exist afterwards.

    ``protect``: paths (the store) whose writing is refused and recorded as such. ``hidden``:
    paths (a task's data and held-out splits) the code may not read: an installed distribution
    that holds one is left out of what is readable. ``max_procs`` bounds the processes;
    ``devices`` names device classes the code may use (``"gpu"``). An output is read back only if
    it is a regular file (never through a symlink) of at most ``max_output_bytes`` (else refused, and
    recorded); no file may exceed ``max_file_bytes`` (RLIMIT_FSIZE); stdout and stderr are kept up
    to ``_MAX_TEXT`` characters each as they are read, the rest counted. See ``confine``, ``runner``."""
    abi = landlock_available()
    launcher = namespace_launcher()
    hidden_all = tuple(sorted({os.path.realpath(os.fspath(p)) for p in (*protect, *hidden)}))
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="sia-sandbox-"))
    refusals_r, refusals_w = os.pipe()  # the child sends each refusal as it happens; it cannot take one back
    launched = False
    try:
        _prepare_scratch(scratch, code, files)
        cfg = _runner_config(scratch, refusals_w, abi, hidden_all, protect, devices)
        child_env = _child_env(scratch, devices, env)
        cgroup = Cgroup(max_procs + 4)  # + unshare and the runner's own
        nproc = None if cgroup.path is not None or os.geteuid() == 0 else _user_processes() + max_procs + 4
        # CUDA reserves far more address space than it uses and fails under RLIMIT_AS (error 304):
        address_limit = "gpu" not in devices  # with the GPU, no memory limit (said in ``isolation``)
        setup = _child_setup(memory_mb * 1024 * 1024 if address_limit else None, nproc, cgroup, max_file_bytes)
        argv = [*(launcher or ()), sys.executable, "-I", "-c", runner.source(), json.dumps(cfg)]

        t0 = time.monotonic()
        launched = True  # _launch closes the write end, whatever happens
        try:
            exit_code, out, err, refused, timed_out = _launch(argv, scratch, child_env, setup, timeout_s, (refusals_r, refusals_w))
        finally:
            cgroup.remove()
        wall = time.monotonic() - t0
        got, unread = read_outputs(scratch, outputs, max_output_bytes)
        status = _status(timed_out, blocked := (*_lines(refused), *unread), exit_code, err.head)
        walls = {"landlock": bool(abi), "namespaces": launcher is not None, "seccomp": seccomp_library() is not None,
                 "pids-cgroup": cgroup.path is not None, "rlimit-nproc": nproc is not None, "rlimit-as": address_limit, "rlimit-fsize": True}
        return SandboxResult(status, None if timed_out else exit_code, out.text(), err.text(), round(wall, 3), blocked, bool(abi), got,
                             tuple(k for k, on in walls.items() if on))
    finally:
        os.close(refusals_r)
        if not launched:
            os.close(refusals_w)
        remove_tree(scratch)


def _prepare_scratch(scratch: str, code: str, files: Mapping[str, bytes] | None) -> None:
    """Write ``files`` and ``main.py`` into the scratch folder."""
    for name, data in (files or {}).items():
        Path(scratch, name).write_bytes(data)
    Path(scratch, "main.py").write_text(code)


def _runner_config(scratch: str, refusals_fd: int, abi: int, hidden_all: tuple[str, ...],
                   protect: Sequence[str | os.PathLike[str]], devices: Sequence[str]) -> dict[str, object]:
    """What the child runner (``sandbox.runner``) confines itself with, as JSON-ready values."""
    return {"scratch": scratch, "read": list(read_roots(hidden_all)) + device_reads(devices), "list": list(list_roots()), "protected": [os.fspath(p) for p in protect],
            "refusals_fd": refusals_fd, "seccomp": seccomp_library(), "landlock": abi, "devices": devices_for(devices), "relax": list(_RELAX), "write_extra": list(_WRITE_EXTRA),
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
            refusals: tuple[int, int]) -> tuple[int | None, Capped, Capped, Capped, bool]:
    """Run ``argv`` to its end or to the time limit, reading stdout, stderr and the refusals pipe
    as they come, each kept up to its cap: (exit code, stdout, stderr, refusals, timed out)."""
    try:
        proc = subprocess.Popen(
            argv, cwd=scratch, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=(refusals[1],),
            preexec_fn=setup,  # noqa: PLW1509 - the limits must be set in the child
        )
    finally:
        os.close(refusals[1])  # the parent's copy: the pipe ends when the sandbox's processes have all let go of it
    assert proc.stdout is not None and proc.stderr is not None
    caps = {proc.stdout.fileno(): Capped(4 * _MAX_TEXT), proc.stderr.fileno(): Capped(4 * _MAX_TEXT), refusals[0]: Capped(_MAX_REFUSALS)}
    timed_out = _drain(caps, time.monotonic() + timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    out, err, refused = caps.values()
    if timed_out is None:  # without namespaces an escaped process may hold the pipes
        err.add(b"\nsandbox: output cut: a process that left the sandbox's group kept its pipes open\n")
    for f in (proc.stdout, proc.stderr):
        f.close()
    proc.wait()
    return proc.returncode, out, err, refused, timed_out is not False


def _drain(caps: dict[int, Capped], deadline: float, kill: Callable[[], None]) -> bool | None:
    """Read every fd of ``caps`` to its end; at ``deadline`` call ``kill`` and allow ``_GRACE_S``
    more. False: all ended in time; True: killed, then all ended; None: still open after the grace."""
    sel = selectors.DefaultSelector()
    for fd in caps:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    killed = False
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if killed:
                    return None
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill()
                killed, deadline = True, time.monotonic() + _GRACE_S
                continue
            for key, _ in sel.select(timeout=left):
                try:
                    chunk = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    caps[key.fd].add(chunk)
                else:
                    sel.unregister(key.fd)
        return killed
    finally:
        sel.close()


class Capped:
    """The first ``cap`` bytes of a stream, and how many bytes it had in all."""

    def __init__(self, cap: int) -> None:
        self.cap, self.head, self.total = cap, b"", 0

    def add(self, chunk: bytes) -> None:
        if len(self.head) < self.cap:
            self.head += chunk[: self.cap - len(self.head)]
        self.total += len(chunk)

    def text(self) -> str:
        text = _text(self.head)
        return text if self.total <= len(self.head) else text + f"\n... [{self.total - len(self.head)} more bytes not kept]"


def _lines(refused: Capped) -> tuple[str, ...]:
    lines = tuple(x for x in refused.head.decode("utf-8", "replace").splitlines() if x)
    return lines if refused.total <= len(refused.head) else (*lines, f"... [{refused.total - len(refused.head)} more bytes of refusals]")


def read_outputs(scratch: str, names: Sequence[str], limit: int) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """The files ``names`` of the scratch folder the code left, each read only if it is a regular
    file (opened without following a symlink, checked on the open file) of at most ``limit`` bytes;
    what was refused, as refusal lines."""
    got: dict[str, bytes] = {}
    refused: list[str] = []
    dir_fd = os.open(scratch, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for name in names:
            if os.path.basename(name) != name or name in (".", ".."):
                refused.append(f"output {name!r}: not a plain file name")
                continue
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                continue
            except OSError as e:  # ELOOP: a symlink
                refused.append(f"output {name}: not read ({'a symlink' if e.errno == errno.ELOOP else e.strerror})")
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    refused.append(f"output {name}: not a regular file")
                elif st.st_size > limit or len(data := _read_upto(fd, limit + 1)) > limit:
                    refused.append(f"output {name}: over {limit} bytes")
                else:
                    got[name] = data
            finally:
                os.close(fd)
    finally:
        os.close(dir_fd)
    return got, tuple(refused)


def _read_upto(fd: int, n: int) -> bytes:
    os.set_blocking(fd, True)
    parts, left = [], n
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def remove_tree(path: str) -> None:
    """Remove the scratch folder whatever the code left in it: any depth (``rm -rf`` walks it
    without recursion), read-only folders, immutable files (their flag cleared when root)."""
    try:
        shutil.rmtree(path)
        return
    except FileNotFoundError:
        return
    except (OSError, RecursionError):  # a chain deeper than Python's recursion, or something it may not delete
        pass
    rm = subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, check=False)
    if rm.returncode != 0 and os.path.lexists(path) and shutil.which("chattr"):
        subprocess.run(["chattr", "-R", "-i", "-a", path], capture_output=True, check=False)
        subprocess.run(["chmod", "-R", "u+rwx", path], capture_output=True, check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", "--", path], capture_output=True, check=False)
    if os.path.lexists(path):
        raise SandboxCleanupError(path)


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
