"""A sandbox for code that an agent writes: a separate Python process with a wall-time limit,
a memory limit, a scratch folder as its only writable place, and protected paths (the store)
that it cannot write to. Its exit, stdout and stderr come back in a ``SandboxResult`` for the
log.

Writes are confined two ways: on Linux with Landlock (kernel-enforced: the child may create,
write, remove or rename files only beneath its scratch folder), and in every case by an audit
hook installed before the agent's code runs, which refuses and records any write-mode open,
removal, rename or mkdir under a protected path. The hook alone is a guard against accidents,
not against code that sets out to escape (ctypes can bypass it); Landlock is the boundary, and
``SandboxResult.landlock`` says whether it was in force.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import msgspec

__all__ = ["SandboxResult", "run_python", "landlock_available"]

Status = Literal["ok", "error", "timeout", "memory", "blocked"]
_MEMORY_EXIT = 86
_BLOCKED_EXIT = 87
_MAX_TEXT = 20_000

# Landlock (linux/landlock.h): syscalls and filesystem access rights
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_WRITE_RIGHTS_V1 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
_REFER, _TRUNCATE = 1 << 13, 1 << 14


class SandboxResult(msgspec.Struct, frozen=True):
    status: Status
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    blocked: tuple[str, ...] = ()  # protected paths the code tried to write
    landlock: bool = False
    outputs: dict[str, bytes] = {}  # files the caller asked to read back from the scratch folder


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def landlock_available() -> int:
    """The kernel's Landlock ABI version, 0 when there is none."""
    if not sys.platform.startswith("linux"):
        return 0
    v = _libc().syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(v), 0)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _confine_writes(writable: Sequence[str], abi: int) -> None:
    """In the child, before exec: writes allowed only beneath ``writable``."""
    rights = _WRITE_RIGHTS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0)
    libc = _libc()
    attr = _RulesetAttr(rights)
    fd = libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    for path in writable:
        pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        rule = _PathBeneath(rights, pfd)
        if libc.syscall(_SYS_ADD_RULE, fd, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
        os.close(pfd)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.syscall(_SYS_RESTRICT, fd, ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(fd)


_RUNNER = r'''
import os, sys
_PROTECTED = [os.path.realpath(p) for p in {protected!r}]
_LOG = open({blocked_log!r}, "a", buffering=1)

def _under(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return any(p == q or p.startswith(q + os.sep) for q in _PROTECTED)

def _hook(event, args):
    target = None
    if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND):
            target = args[0]
    elif event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.utime", "os.symlink", "os.link", "shutil.rmtree", "shutil.copyfile", "shutil.move"):
        target = args[0] if event not in ("os.symlink", "os.link", "shutil.copyfile") else args[1]
    elif event in ("os.rename", "os.replace"):
        if _under(args[0]):
            target = args[0]
        else:
            target = args[1]
    if target is not None and _under(target):
        _LOG.write(os.fsdecode(target) + "\n")
        raise PermissionError(f"sandbox: writing to {{os.fsdecode(target)}} is not allowed (protected path)")

sys.addaudithook(_hook)
try:
    exec(compile(open("main.py").read(), "main.py", "exec"), {{"__name__": "__main__"}})
except MemoryError:
    sys.stderr.write("sandbox: MemoryError (memory limit reached)\n")
    sys.exit({memory_exit})
except PermissionError as e:
    if "sandbox:" in str(e):
        sys.stderr.write(str(e) + "\n")
        sys.exit({blocked_exit})
    raise
'''


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
    env: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh scratch folder holding ``files``; return what
    happened and the bytes of ``outputs`` (names in the scratch folder) that exist afterwards."""
    abi = landlock_available()
    with tempfile.TemporaryDirectory(prefix="sia-sandbox-") as scratch:
        for name, data in (files or {}).items():
            Path(scratch, name).write_bytes(data)
        Path(scratch, "main.py").write_text(code)
        blocked_log = os.path.join(scratch, ".blocked")
        Path(blocked_log).touch()
        runner = _RUNNER.format(
            protected=[os.fspath(p) for p in protect], blocked_log=blocked_log,
            memory_exit=_MEMORY_EXIT, blocked_exit=_BLOCKED_EXIT,
        )
        child_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": scratch, "TMPDIR": scratch,
            "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MPLCONFIGDIR": scratch,
            "TRITON_CACHE_DIR": os.path.join(scratch, ".triton"),
            **(env or {}),
        }
        writable = [scratch, "/dev"]

        def setup() -> None:  # runs in the child between fork and exec
            os.setsid()
            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if abi:
                _confine_writes(writable, abi)

        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", runner], cwd=scratch, env=child_env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, preexec_fn=setup,  # noqa: PLW1509 - the limits must be set in the child
        )
        try:
            out, err = proc.communicate(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            timed_out = True
        wall = time.monotonic() - t0
        blocked = tuple(x for x in Path(blocked_log).read_text().splitlines() if x)
        code_ = proc.returncode
        status: Status
        if timed_out:
            status = "timeout"
        elif blocked or code_ == _BLOCKED_EXIT:
            status = "blocked"
        elif code_ == _MEMORY_EXIT or (code_ is not None and code_ < 0 and b"MemoryError" in err):
            status = "memory"
        elif code_ == 0:
            status = "ok"
        else:
            status = "error"
        got = {n: Path(scratch, n).read_bytes() for n in outputs if Path(scratch, n).is_file()}
        return SandboxResult(status, None if timed_out else code_, _text(out), _text(err), round(wall, 3), blocked, bool(abi), got)
