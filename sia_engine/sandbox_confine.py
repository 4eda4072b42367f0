"""How the sandbox confines a process: namespaces, a process limit, and Landlock rules.

The sandboxed Python starts through ``unshare``: a new network namespace (loopback only, down: no
TCP, no UDP, nothing leaves the machine), a new PID namespace whose first process is the
sandbox's Python, and a mount namespace with that PID namespace's own ``/proc``. When it ends, or is killed at the time limit, the kernel kills every process
left in that namespace, whatever session or group it moved to. As root the namespaces are
created directly; as an ordinary user inside a user namespace first (``--user --map-root-user``)
where the kernel allows it. A pids cgroup (root) or ``RLIMIT_NPROC`` (an ordinary user) bounds the
processes.

Inside, before the agent's code runs, the runner applies Landlock (kernel-enforced, inherited by
every child): files may be read only beneath the Python installation (the standard library and
each installed distribution, except any that holds a hidden path such as the task's data), the
system's shared libraries and the scratch folder; written only in the scratch folder; no device
node, FIFO or socket file may be made anywhere; with ABI 4+ no TCP bind or connect; with ABI 6+ no
signal to a process outside the sandbox and no abstract unix socket outside it. An audit hook
records and refuses what the kernel would refuse, so the tool event says what was tried.
"""

from __future__ import annotations

import functools
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from collections.abc import Sequence

__all__ = ["namespace_launcher", "read_roots", "list_roots", "RUNNER", "Cgroup", "devices_for", "device_reads", "libcuda_dir", "GPU_PROGRAMS"]

# the system's own read-only parts that an interpreter and its native libraries need
_SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/etc/localtime",
                "/usr/share/zoneinfo", "/sys/devices/system/cpu", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


@functools.lru_cache(maxsize=1)
def namespace_launcher() -> tuple[str, ...] | None:
    """The ``unshare`` command line that gives a new network and PID namespace here, or None
    (no ``unshare``, or the kernel refuses: then the sandbox runs without namespaces, and says so)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    # --mount-proc: a /proc of the new PID namespace (CUDA does not start in a PID namespace that
    # sees the host's /proc; and the host's processes are not listed inside)
    args = (exe, *(() if os.geteuid() == 0 else ("--user", "--map-root-user")), "--net", "--pid", "--fork", "--kill-child",
            "--mount", "--mount-proc", "--")
    try:
        ok = subprocess.run([*args, sys.executable, "-c", "pass"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return args if ok else None


def _site_dirs() -> list[str]:
    dirs = list(site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str):
        dirs.append(user)
    for p in sys.path:  # a venv's site-packages, a distribution's dist-packages
        if p.endswith(("site-packages", "dist-packages")) and p not in dirs:
            dirs.append(p)
    return [os.path.realpath(d) for d in dirs if os.path.isdir(d)]


def list_roots() -> tuple[str, ...]:
    """Folders whose entries may be listed (not read): the standard library's and site-packages."""
    return tuple(dict.fromkeys([os.path.realpath(sysconfig.get_paths()["stdlib"]), *_site_dirs()]))


@functools.lru_cache(maxsize=16)
def read_roots(hidden: tuple[str, ...]) -> tuple[str, ...]:
    """Everything the sandboxed code may read (directories and files), none of which holds a
    path in ``hidden``. Site-packages is listed entry by entry so that one distribution (the one
    that ships a task's data) can be left out; the project's own source is not listed at all."""
    hidden_real = [os.path.realpath(h) for h in hidden]

    def holds_hidden(p: str) -> bool:
        return any(h == p or h.startswith(p + os.sep) for h in hidden_real)

    roots: list[str] = []
    sites = _site_dirs()
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    for name in sorted(os.listdir(stdlib)):
        p = os.path.join(stdlib, name)
        if p not in sites and not holds_hidden(p):
            roots.append(p)
    for sp in sites:
        for name in sorted(os.listdir(sp)):
            p = os.path.join(sp, name)
            if not holds_hidden(p) and not name.endswith(".pth"):
                roots.append(p)
    exe_dir = os.path.dirname(os.path.realpath(sys.executable))
    roots.append(exe_dir)
    libdir = sysconfig.get_config_var("LIBDIR")
    if isinstance(libdir, str) and os.path.isdir(libdir):
        roots += [os.path.join(libdir, n) for n in os.listdir(libdir) if n.startswith("libpython")]
    roots += [p for p in _SYSTEM_READ if os.path.exists(p)]
    return tuple(dict.fromkeys(r for r in roots if not holds_hidden(r)))


class Cgroup:
    """A pids cgroup (v1 or v2) that bounds the sandbox's processes, where this process may make
    one (root, a delegated v2 tree); ``path`` is None elsewhere (then ``RLIMIT_NPROC`` is used)."""

    def __init__(self, max_procs: int) -> None:
        self.path: str | None = None
        for base in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
            if not os.access(base, os.W_OK) or not os.path.exists(os.path.join(base, "cgroup.procs")):
                continue
            p = os.path.join(base, f"sia-sandbox-{os.getpid()}-{id(self)}")
            try:
                os.mkdir(p)
                with open(os.path.join(p, "pids.max"), "w") as f:
                    f.write(str(max_procs))
            except OSError:
                shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) and not os.listdir(p) else None
                continue
            self.path = p
            break

    def join(self) -> None:
        """In the child, before exec: move this process into the cgroup."""
        if self.path is not None:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def remove(self) -> None:
        if self.path is not None:
            try:
                os.rmdir(self.path)
            except OSError:
                pass


# The runner: the sandbox's first Python code. It applies Landlock to itself (inherited by every
# child), installs the audit hook, then runs main.py. {cfg} is a JSON object (see sandbox.py).
RUNNER = r'''
import ctypes, json, os, socket, sys
sys.dont_write_bytecode = True  # -I ignores PYTHONDONTWRITEBYTECODE; the installation is read-only here
CFG = json.loads({cfg!r})
SCRATCH = CFG["scratch"]
try:  # this process's own /proc entry
    _SELF = ["/proc/" + os.readlink("/proc/self")]
except OSError:
    _SELF = []
_READ = tuple(r.rstrip("/") for r in CFG["read"] + _SELF + ["/proc/cpuinfo", "/proc/meminfo", "/proc/stat"])
_LIST = tuple(CFG["list"])
_READ_PREFIX = tuple(r + "/" for r in _READ)
_PROTECTED = tuple(os.path.realpath(p) for p in CFG["protected"])
_PROTECTED_PREFIX = tuple(q + "/" for q in _PROTECTED)
_EXE_DIR = os.path.dirname(os.path.realpath(sys.executable))
_PROGRAMS = tuple(CFG.get("programs", ()))  # names of other programs it may run (the GPU's compiler)
_LOG = open(CFG["blocked_log"], "a", buffering=1)

def _landlock():
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
    net = 3 if abi >= 4 and "net" not in off else 0          # bind and connect TCP: no rule allows either
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
    def allow(path, rights):
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
    for p in (("/",) if read_all else _READ):
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

def _real(path):
    try:
        return os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return None

def _inside(p, roots, prefixes):
    return p in roots or p.startswith(prefixes)

def _block(what):
    _LOG.write(what + "\n")
    raise PermissionError("sandbox: " + what + " is not allowed")

def _check_write(p, null_ok=False):
    """Refuse (and record) a write outside the scratch folder (writing into /dev/null where
    ``null_ok``); a protected path says so."""
    if not (null_ok and p == "/dev/null") and not _inside(p, (SCRATCH,), (SCRATCH + "/",)):
        _block(("write (protected) " if _inside(p, _PROTECTED, _PROTECTED_PREFIX) else "write ") + p)

_WRITE_EVENTS = ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime", "os.symlink", "os.link",
                 "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.rename", "os.replace")

def _hook(event, args):
    if event == "open" and args and args[0] is not None and not isinstance(args[0], int):
        p = _real(args[0])
        if p is None:
            return
        mode, flags = args[1], (args[2] if len(args) > 2 else 0) or 0
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        if writing:
            _check_write(p, null_ok=True)
        elif (not _inside(p, (SCRATCH,) + _READ, (SCRATCH + "/",) + _READ_PREFIX) and p not in CFG["devices"]
              and not (p in _LIST and os.path.isdir(p)) and os.path.exists(p)):
            _block("read " + p)  # (a path that does not exist is left to the system: ENOENT)
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

_landlock()
sys.addaudithook(_hook)
try:
    exec(compile(open("main.py").read(), "main.py", "exec"), {{"__name__": "__main__"}})
except MemoryError:
    sys.stderr.write("sandbox: MemoryError (memory limit reached)\n")
    sys.exit({memory_exit})
except PermissionError as e:
    if "sandbox:" not in str(e):  # the kernel refused what the hook did not see
        _LOG.write("kernel refused: " + (str(e.filename) if e.filename else str(e)) + "\n")
    sys.stderr.write(str(e) + "\n")
    sys.exit({blocked_exit})
'''


# what a CUDA driver reads besides its device nodes
_GPU_READ = ("/proc/driver/nvidia", "/sys/bus/pci", "/sys/devices", "/sys/module/nvidia", "/usr/share/nvidia", "/etc/nvidia",
             "/usr/local/nvidia", "/usr/local/cuda", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
             # Triton compiles its CUDA launcher with the system's C compiler
             "/usr/bin", "/usr/include", "/usr/libexec", "/usr/local/include")
# the programs Triton runs on a GPU (its launcher's build); everything else stays refused
GPU_PROGRAMS = ("gcc", "cc", "x86_64-linux-gnu-gcc", "as", "ld", "ld.bfd", "x86_64-linux-gnu-as", "x86_64-linux-gnu-ld", "file",
                "ptxas", "ptxas-blackwell", "cuobjdump", "nvdisasm", "nvlink")


@functools.lru_cache(maxsize=1)
def libcuda_dir() -> str | None:
    """The folder of the CUDA driver library (``ldconfig -p``, read here: the sandbox may not run
    ldconfig), for ``TRITON_LIBCUDA_PATH``."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if "libcuda.so.1" in line and "=>" in line:
            return os.path.dirname(os.path.realpath(line.split("=>")[1].strip()))
    return None


def devices_for(names: Sequence[str]) -> list[str]:
    """Device nodes (and the driver's own files) a task may use: an NVIDIA GPU's, where asked
    for and present."""
    out: list[str] = []
    if "gpu" in names and os.path.isdir("/dev"):
        out += [os.path.join("/dev", n) for n in sorted(os.listdir("/dev")) if n.startswith("nvidia")]
    return out


def device_reads(names: Sequence[str]) -> list[str]:
    """What the devices' drivers and tools read and run (readable and executable, not writable)."""
    out: list[str] = []
    if "gpu" in names:
        out += [p for p in _GPU_READ if os.path.exists(p)]
        lib = libcuda_dir()
        if lib is not None:
            out.append(lib)
    return out
