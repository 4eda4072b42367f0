"""Each way out of the sandbox that was found open (issue 10), tried again: each must fail, and
each refusal the audit hook sees is recorded in ``blocked``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sia_engine.sandbox.confine import namespace_launcher
from sia_engine.sandbox.jail import landlock_available, run_python

ROOT = Path(__file__).resolve().parents[3]
needs_landlock = pytest.mark.skipif(not landlock_available(), reason="the kernel has no Landlock: reads are not confined (see the table in docs/sandbox.md)")
needs_namespaces = pytest.mark.skipif(namespace_launcher() is None, reason="no network/PID namespaces here (see the table in docs/sandbox.md)")


def scanpy_data() -> Path:
    from tasks.scrna.data import DEFAULT_DATA, data_file

    path = data_file(DEFAULT_DATA)
    if not path.is_file():
        pytest.skip("scanpy's bundled data is not installed")
    return path


@needs_landlock
def test_held_out_data_cannot_be_read_or_recomputed(tmp_path: Path) -> None:
    data = scanpy_data()
    store = tmp_path / "store"
    store.mkdir()
    (store / "log.duckdb").write_bytes(b"the log")
    tries = {
        "the task's data file": f"print(len(open({str(data)!r}, 'rb').read()))",
        "the held-out split, recomputed": f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
                                         "from tasks.scrna.data import default_counts\nfrom tasks.scrna.metrics import mcv_split\n"
                                         "print(mcv_split(default_counts(), 1).test.sum())",
        "the store": f"print(open({str(store / 'log.duckdb')!r}, 'rb').read())",
        "any file": "print(open('/etc/passwd').read())",
    }
    for what, code in tries.items():
        r = run_python(code, protect=[store], hidden=[str(data)])
        assert r.stdout == "", (what, r.stdout)
        if "mount-view" in r.isolation and what in ("the held-out split, recomputed", "any file"):
            # in bubblewrap's view the project's source and /etc/passwd are not there at all
            assert r.status == "error" and ("No module named 'tasks'" in r.stderr or "No such file" in r.stderr), (what, r.stderr)
            continue
        assert r.status == "blocked", (what, r.status, r.stderr)  # the data and the store: refused and recorded, view or not
        assert any(b.startswith("read ") for b in r.blocked), (what, r.blocked)
    # past the audit hook (ctypes), the kernel still refuses
    r = run_python(f"import ctypes\nprint(ctypes.CDLL(None).open({str(data).encode()!r}, 0))", hidden=[str(data)])
    assert r.status == "ok" and r.stdout.strip() == "-1"
    # what the code needs still works: numpy, and the files handed to it
    r = run_python("import numpy as np\nprint(np.load('x.npy').sum())", files={"x.npy": _npy()}, hidden=[str(data)])
    assert r.status == "ok" and r.stdout.strip() == "6", r.stderr


def _npy() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.array([1, 2, 3]))
    return buf.getvalue()


@needs_namespaces
def test_no_network(tmp_path: Path) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(6)
    port = srv.getsockname()[1]
    got: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = srv.accept()
            got.append(conn.recv(100))
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    tcp = f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'stolen')"
    r = run_python(tcp)
    assert r.status == "blocked" and r.blocked == (f"network connect ('127.0.0.1', {port})",), r.blocked
    udp = "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'stolen', ('8.8.8.8', 53))"
    r = run_python(udp)
    assert r.status == "blocked" and r.blocked[0].startswith("network sendto"), r.blocked
    # past the hook: raw syscalls from ctypes, inside a network namespace with no way out
    raw = ("import ctypes, socket, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "fd = libc.socket(socket.AF_INET, socket.SOCK_STREAM, 0)\n"
           f"addr = struct.pack('!HH4s8x', socket.AF_INET, {port}, socket.inet_aton('127.0.0.1'))\n"
           "addr = struct.pack('H', socket.AF_INET) + addr[2:]\n"
           "print(libc.connect(fd, addr, len(addr)), ctypes.get_errno())\n"
           "fd2 = libc.socket(socket.AF_INET, socket.SOCK_DGRAM, 0)\n"
           "dst = struct.pack('H', socket.AF_INET) + struct.pack('!H4s8x', 53, socket.inet_aton('8.8.8.8'))\n"
           "print(libc.sendto(fd2, b'stolen', 6, 0, dst, len(dst)))")
    r = run_python(raw)
    assert r.status == "ok" and r.stdout.split()[0] == "-1" and r.stdout.split()[-1] == "-1", r.stdout
    t.join()
    srv.close()
    assert got == []


@needs_namespaces
def test_no_programs_and_a_process_limit() -> None:
    r = run_python("import subprocess\nsubprocess.run(['id'])")
    assert r.status == "blocked" and r.blocked == ("exec id",), r.blocked
    forks = ("import os, time\nn = 0\nfor _ in range(50):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
             "    if pid == 0:\n        time.sleep(5)\n        os._exit(0)\n    n += 1\nprint(n)")
    r = run_python(forks, max_procs=16, timeout_s=30)
    assert r.status == "ok" and 0 < int(r.stdout) < 50, (r.stdout, r.stderr)
    assert "pids-cgroup" in r.isolation or "rlimit-nproc" in r.isolation


@needs_namespaces
def test_the_whole_tree_ends_at_the_time_limit_and_at_the_end() -> None:
    for n, tail in enumerate(("time.sleep(0.5)\nwhile True:\n    pass\n", "time.sleep(0.5)\n")):
        marker = f"sia-escape-{os.getpid()}-{n}"
        escape = ("import os, sys, time\nif os.fork() == 0:\n    os.setsid()\n"  # a new session, stdout kept open
                  f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n" + tail)
        t0 = time.monotonic()
        r = run_python(escape, timeout_s=3)
        took = time.monotonic() - t0
        if n == 0:
            assert r.status == "timeout" and took < 3 + 5, (r.status, took)
        else:  # returned normally with a child that left its session: the child ends too
            assert r.status == "ok" and took < 5, (r.status, took, r.stderr)
        _assert_gone(marker)


def _assert_gone(marker: str) -> None:
    for _ in range(50):
        alive = []
        for d in os.listdir("/proc"):
            try:
                if d.isdigit() and marker.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    alive.append(d)
            except OSError:
                pass
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"{alive} outlived the sandbox")


@needs_namespaces
def test_nothing_outside_is_signalled() -> None:
    outside = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        r = run_python(f"import os, signal\ntry:\n    os.kill({outside.pid}, signal.SIGKILL)\nexcept OSError as e:\n    print(type(e).__name__)")
        assert r.status == "ok" and r.stdout.strip() in ("ProcessLookupError", "PermissionError"), r.stdout
        time.sleep(0.2)
        assert outside.poll() is None, "the sandbox killed a process it did not start"
    finally:
        outside.kill()
        outside.wait()


@needs_landlock
def test_no_device_nodes_and_no_dev_shm() -> None:
    name = f"sia-sandbox-test-{os.getpid()}"
    r = run_python(f"open('/dev/shm/{name}', 'w').write('x')")
    assert r.status == "blocked" and r.blocked == (f"write /dev/shm/{name}",) and not os.path.exists(f"/dev/shm/{name}")
    r = run_python("import os, stat\nos.mknod('null2', stat.S_IFCHR | 0o666, os.makedev(1, 3))")
    assert r.status == "blocked" and r.blocked and r.blocked[0].startswith("kernel refused"), (r.blocked, r.stderr)
    r = run_python("import os\nos.mkfifo('pipe')")
    assert r.status == "blocked", r.stderr
