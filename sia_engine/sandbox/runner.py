"""The sandbox's first Python code, run inside the jail as ``python -I -c <this file> <config>``.

It applies Landlock to itself (inherited by every child), installs an audit hook that refuses and
records what the kernel would refuse, then runs ``main.py``. ``<config>`` is the JSON object that
``jail.run_python`` builds (scratch folder, readable roots, devices, exit codes). This module is
never imported by the engine: its text is the program, read with ``source()``; it imports nothing
but the standard library, since it runs in an isolated interpreter.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["source"]

CFG: dict[str, Any] = {}
SCRATCH = ""
_READ: tuple[str, ...] = ()
_LIST: tuple[str, ...] = ()
_READ_PREFIX: tuple[str, ...] = ()
_PROTECTED: tuple[str, ...] = ()
_PROTECTED_PREFIX: tuple[str, ...] = ()
_HIDDEN: tuple[str, ...] = ()
_HIDDEN_PREFIX: tuple[str, ...] = ()
_EXE_DIR = ""
_PROGRAMS: tuple[str, ...] = ()  # names of other programs it may run (the GPU's compiler)
_SELF: list[str] = []
_LOG: TextIO | None = None


def source() -> str:
    """This file's text: the program the jail runs."""
    return Path(__file__).read_text()


def _landlock() -> None:
    abi = CFG["landlock"]
    if not abi:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    EXEC, WRITE, READ, READ_DIR = 1, 2, 4, 8
    RM_DIR, RM_FILE, MK_CHAR, MK_DIR, MK_REG, MK_SOCK, MK_FIFO, MK_BLOCK, MK_SYM = 16, 32, 64, 128, 256, 512, 1024, 2048, 4096
    REFER, TRUNC, IOCTL = 1 << 13, 1 << 14, 1 << 15
    fs = EXEC | WRITE | READ | READ_DIR | RM_DIR | RM_FILE | MK_CHAR | MK_DIR | MK_REG | MK_SOCK | MK_FIFO | MK_BLOCK | MK_SYM
    off = set(CFG.get("relax", ()))
    fs |= (REFER if abi >= 2 else 0) | (TRUNC if abi >= 3 else 0) | (IOCTL if abi >= 5 and "ioctl" not in off else 0)
    net = 3 if abi >= 4 and "net" not in off else 0  # bind and connect TCP: no rule allows either
    scoped = (1 if "unix" not in off else 0) | (2 if "signal" not in off else 0) if abi >= 6 else 0  # only within the sandbox
    attr = (ctypes.c_uint64 * 3)(fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    read_all = "read" in off  # everything readable (a diagnosis only)
    fd = libc.syscall(444, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    def allow(path: str, rights: int) -> None:
        try:
            pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return
        if not os.path.isdir(path):
            rights &= EXEC | WRITE | READ | TRUNC | IOCTL
        rule = PathBeneath(rights & fs, pfd)
        if libc.syscall(445, fd, 1, ctypes.byref(rule), ctypes.c_uint32(0)) != 0:
            err = ctypes.get_errno()
            os.close(pfd)
            raise OSError(err, "landlock_add_rule failed for " + path)
        os.close(pfd)

    # programs may be run only from Python's own folder (the GPU's compilers aside): shared libraries
    # load whatever (Landlock's EXECUTE right governs execve, not mmap), binaries under /usr/lib do not run
    may_exec = bool(CFG.get("programs"))
    for p in (("/",) if read_all else _READ):
        allow(p, (EXEC if may_exec else 0) | READ | READ_DIR)
    for p in () if may_exec else CFG["python_exec"]:
        allow(p, EXEC | READ | READ_DIR)
    for p in _LIST:  # the folders that hold what is readable: listed, their other files not read
        allow(p, READ_DIR)
    allow(SCRATCH, READ | READ_DIR | WRITE | RM_DIR | RM_FILE | MK_DIR | MK_REG | MK_SYM | REFER | TRUNC)
    allow("/dev/null", READ | WRITE | TRUNC)
    for p in _SELF:  # its own /proc entry (CUDA writes there, truncating)
        allow(p, READ | READ_DIR | WRITE | TRUNC)
    for dev in CFG["devices"]:
        allow(dev, READ | WRITE | IOCTL)
    for p in CFG.get("write_extra", ()):
        allow(p, READ | READ_DIR | WRITE | RM_DIR | RM_FILE | MK_DIR | MK_REG | MK_SYM | MK_CHAR | REFER | TRUNC | IOCTL)
    nnp = "nnp" not in off  # as root Landlock needs no no_new_privs (a diagnosis only)
    if (nnp and libc.prctl(38, 1, 0, 0, 0) != 0) or libc.syscall(446, fd, ctypes.c_uint32(0)) != 0:
        raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    os.close(fd)


def _drop_privileges() -> None:
    """Every capability gone from every set, none to be gained back (the bounding set emptied,
    no_new_privs): the code is uid 0 of its namespaces with no power over anything the file modes
    do not give it (no ``sethostname``, real-time scheduling, immutable flags, raw devices ...)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the kernel's last capability)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    if libc.capset(header, (ctypes.c_uint32 * 6)()) != 0:  # effective, permitted, inheritable: all empty
        raise OSError(ctypes.get_errno(), "capset failed")


# what no scoring code needs and a way out would: other processes' memory, the kernel's keyrings,
# modules, mounts and namespaces (a new user namespace would give back every capability), BPF,
# perf, the clock, and a file made in memory to run (``memfd_create``: left on for the GPU, whose
# driver uses it)
_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot", "bpf", "keyctl",
           "add_key", "request_key", "perf_event_open", "init_module", "finit_module", "delete_module", "kexec_load",
           "kexec_file_load", "reboot", "swapon", "swapoff", "sethostname", "setdomainname", "unshare", "setns", "userfaultfd",
           "open_by_handle_at", "name_to_handle_at", "acct", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
           "iopl", "ioperm", "quotactl", "lookup_dcookie", "fanotify_init", "move_mount", "open_tree", "fsopen", "fsmount",
           "fspick", "mount_setattr", "io_uring_setup")
# numbers shared by every architecture (Linux 5.1+), for a libseccomp too old to name them
_UNIFIED = {"clone3": 435, "io_uring_setup": 425, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsmount": 432,
            "fspick": 433, "mount_setattr": 442}
_CLONE_NAMESPACES = (0x10000000, 0x00020000, 0x04000000, 0x08000000, 0x20000000, 0x40000000, 0x02000000, 0x00000080)  # user mnt uts ipc pid net cgroup time


def _seccomp(lib: Any, gpu: bool) -> None:
    """A seccomp filter (libseccomp): the calls in ``_DENIED`` fail with EPERM, ``clone`` with a
    namespace flag too, and ``clone3`` (whose flags a filter cannot read) with ENOSYS, so that
    the C library falls back to ``clone``. Inherited by every child; cannot be removed."""

    class ArgCmp(ctypes.Structure):
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]

    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    ctx = lib.seccomp_init(ctypes.c_uint32(0x7FFF0000))  # SCMP_ACT_ALLOW
    eperm, enosys = ctypes.c_uint32(0x00050000 | 1), ctypes.c_uint32(0x00050000 | 38)  # SCMP_ACT_ERRNO(EPERM / ENOSYS)

    def rule(action: Any, name: str, *cmps: Any) -> None:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:  # not a call on this architecture, or newer than this libseccomp: the essentials by number
            nr = _UNIFIED.get(name, -1)
        if nr < 0:
            return
        arr = (ArgCmp * max(len(cmps), 1))(*cmps)
        if lib.seccomp_rule_add_array(ctypes.c_void_p(ctx), action, nr, len(cmps), arr) != 0:
            raise OSError("seccomp_rule_add failed for " + name)

    for name in _DENIED + (() if gpu else ("memfd_create",)):
        rule(eperm, name)
    for flag in _CLONE_NAMESPACES:
        rule(eperm, "clone", ArgCmp(0, 7, flag, flag))  # SCMP_CMP_MASKED_EQ: flags & flag == flag
    rule(enosys, "clone3")
    if lib.seccomp_load(ctypes.c_void_p(ctx)) != 0:
        raise OSError("seccomp_load failed")
    lib.seccomp_release(ctypes.c_void_p(ctx))


def _real(path: Any) -> str | None:
    try:
        return os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None


def _inside(p: str, roots: tuple[str, ...], prefixes: tuple[str, ...]) -> bool:
    return p in roots or p.startswith(prefixes)


def _block(what: str) -> None:
    assert _LOG is not None
    _LOG.write(what + "\n")
    raise PermissionError("sandbox: " + what + " is not allowed")


def _check_write(p: str, null_ok: bool = False) -> None:
    """Refuse (and record) a write outside the scratch folder (writing into /dev/null where
    ``null_ok``); a protected path says so."""
    if not (null_ok and p == "/dev/null") and not _inside(p, (SCRATCH,), (SCRATCH + "/",)):
        _block(("write (protected) " if _inside(p, _PROTECTED, _PROTECTED_PREFIX) else "write ") + p)


_WRITE_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime", "os.symlink", "os.link",
                 "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.rename", "os.replace")


def _hook_open(args: tuple[Any, ...]) -> None:
    p = _real(args[0])
    if p is None:
        return
    mode, flags = args[1], (args[2] if len(args) > 2 else 0) or 0
    writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
    if writing:
        _check_write(p, null_ok=True)
    elif (not _inside(p, (SCRATCH, *_READ), (SCRATCH + "/", *_READ_PREFIX)) and p not in CFG["devices"]
          and not (p in _LIST and os.path.isdir(p)) and (os.path.exists(p) or _inside(p, _HIDDEN, _HIDDEN_PREFIX))):
        _block("read " + p)  # (a path that does not exist is left to the system: ENOENT; a hidden one, absent from the view, is recorded)


def _hook_exec(event: str, args: tuple[Any, ...]) -> None:
    exe = args[0]
    if event == "os.system":
        _block("exec " + os.fsdecode(exe))
    if event == "subprocess.Popen" and exe is None:
        argv = args[1]
        exe = argv if isinstance(argv, (str, bytes)) else (argv[0] if argv else "")
    p = _real(exe)
    name = os.path.basename(os.fsdecode(exe)) if exe is not None else "?"
    if (p is None or not p.startswith(_EXE_DIR + "/")) and name not in _PROGRAMS:
        _block("exec " + (os.fsdecode(exe) if exe is not None else "?"))


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
        _hook_open(args)
    elif event in _WRITE_EVENTS:
        if event in ("os.symlink", "os.link", "shutil.copyfile"):  # what is written is the second argument
            targets = [args[1]]
        elif event in ("os.rename", "os.replace", "shutil.move"):  # both ends change
            targets = [args[0], args[1]]
        else:
            targets = [args[0]]
        for t in targets:
            p = _real(t)
            if p is not None:
                _check_write(p)
    elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"):
        sock, addr = args[0], args[1] if len(args) > 1 else None
        if getattr(sock, "family", None) != socket.AF_UNIX:
            _block("network " + event.split(".")[1] + " " + repr(addr))
        p = _real(addr) if isinstance(addr, (str, bytes)) else None
        if p is not None and not _inside(p, (SCRATCH,), (SCRATCH + "/",)):
            _block("unix socket " + event.split(".")[1] + " " + p)
    elif event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"):
        _hook_exec(event, args)


def _configure(cfg: dict[str, Any]) -> None:
    global CFG, SCRATCH, _SELF, _READ, _LIST, _READ_PREFIX, _PROTECTED, _PROTECTED_PREFIX, _HIDDEN, _HIDDEN_PREFIX, _EXE_DIR, _PROGRAMS, _LOG
    CFG = cfg
    SCRATCH = cfg["scratch"]
    try:  # this process's own /proc entry
        _SELF = ["/proc/" + os.readlink("/proc/self")]
    except OSError:
        _SELF = []
    _READ = tuple(r.rstrip("/") for r in cfg["read"] + _SELF + ["/proc/cpuinfo", "/proc/meminfo", "/proc/stat"])
    _LIST = tuple(cfg["list"])
    _READ_PREFIX = tuple(r + "/" for r in _READ)
    _PROTECTED = tuple(os.path.realpath(p) for p in cfg["protected"])
    _PROTECTED_PREFIX = tuple(q + "/" for q in _PROTECTED)
    _HIDDEN = tuple(cfg.get("hidden", ()))
    _HIDDEN_PREFIX = tuple(h + "/" for h in _HIDDEN)
    _EXE_DIR = os.path.dirname(os.path.realpath(sys.executable))
    _PROGRAMS = tuple(cfg.get("programs", ()))
    # the refusals go to the parent through a pipe as they happen: the code may add to it, never take back
    _LOG = os.fdopen(cfg["refusals_fd"], "w", buffering=1)  # noqa: SIM115 - open for the process's life


def main() -> None:
    sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE; the installation is read-only here
    cfg = json.loads(sys.argv[1])
    sys.argv = ["-c"]  # what the code sees, as under a plain ``python -c``
    _configure(cfg)
    seccomp = ctypes.CDLL(cfg["seccomp"]) if cfg.get("seccomp") else None  # loaded before Landlock confines reads
    _landlock()
    _drop_privileges()
    if seccomp is not None:
        _seccomp(seccomp, bool(cfg["devices"]))
    sys.addaudithook(_hook)
    try:
        with open("main.py") as f:
            code = compile(f.read(), "main.py", "exec")
        exec(code, {"__name__": "__main__"})
    except MemoryError:
        sys.stderr.write("sandbox: MemoryError (memory limit reached)\n")
        sys.exit(cfg["memory_exit"])
    except PermissionError as e:
        if "sandbox:" not in str(e):  # the kernel refused what the hook did not see
            assert _LOG is not None
            _LOG.write("kernel refused: " + (str(e.filename) if e.filename else str(e)) + "\n")
        sys.stderr.write(str(e) + "\n")
        sys.exit(cfg["blocked_exit"])


if __name__ == "__main__":
    main()
