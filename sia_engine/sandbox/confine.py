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

import contextlib
import functools
import os
import re
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence

__all__ = ["namespace_launcher", "read_roots", "list_roots", "Cgroup", "devices_for", "device_reads", "libcuda_dir", "GPU_PROGRAMS"]

# the system's own read-only parts that an interpreter and its native libraries need
_SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/etc/ld.so.cache", "/etc/localtime",
                "/usr/share/zoneinfo", "/sys/devices/system/cpu", "/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")


@functools.lru_cache(maxsize=1)
def namespace_launcher() -> tuple[str, ...] | None:
    """The ``unshare`` command line that gives new network, PID, IPC, UTS and mount namespaces here, or None
    (no ``unshare``, or the kernel refuses: then the sandbox runs without namespaces, and says so)."""
    exe = shutil.which("unshare")
    if exe is None:
        return None
    # --mount-proc: a /proc of the new PID namespace (CUDA does not start in a PID namespace that
    # sees the host's /proc; and the host's processes are not listed inside)
    args = (exe, *(() if os.geteuid() == 0 else ("--user", "--map-root-user")), "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child",
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
                with contextlib.suppress(OSError):
                    os.rmdir(p)  # a cgroup folder lists its interface files, yet rmdir removes it
                continue
            self.path = p
            break

    def join(self) -> None:
        """In the child, before exec: move this process into the cgroup."""
        if self.path is not None:
            with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))

    def remove(self) -> None:
        """Kill whatever is still in the cgroup and remove it (processes killed at the time limit
        take a moment to leave it: retried for up to a second, never left behind silently)."""
        if self.path is None:
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                self._kill_all()
                time.sleep(0.02)
        raise OSError(f"the sandbox's pids cgroup {self.path} still holds processes after they were killed; remove it by hand")

    def _kill_all(self) -> None:
        assert self.path is not None
        kill = os.path.join(self.path, "cgroup.kill")  # cgroup v2, Linux 5.14+: every process at once
        try:
            if os.path.exists(kill):
                with open(kill, "w") as f:
                    f.write("1")
                return
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except OSError:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


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


@functools.lru_cache(maxsize=1)
def python_programs() -> tuple[str, ...]:
    """What running Python needs the right to execute: its own folder, and the dynamic loader its
    executable names (the kernel executes that too). Other programs are not run."""
    exe = os.path.realpath(sys.executable)
    out = [os.path.dirname(exe)]
    try:
        with open(exe, "rb") as f:
            head = f.read(4096)
    except OSError:
        return tuple(out)
    if (m := re.search(rb"(/[\w/.+-]*ld-[\w.+-]*\.so[\w.]*)\x00", head)) is not None:
        loader = os.fsdecode(m.group(1))
        out += [p for p in dict.fromkeys((loader, os.path.realpath(loader))) if os.path.exists(p)]
    return tuple(out)
