"""Issue 19, Deliver 1: bubblewrap's read-only view. The code sees only what it may read; what it
may not is not hidden by a rule there, it does not exist. Without bwrap the sandbox still runs
(through unshare), and says so."""

from __future__ import annotations

import os
import site
from pathlib import Path

import pytest

from sia_engine.sandbox import jail
from sia_engine.sandbox.jail import run_python
from sia_engine.sandbox.view import bwrap_program

needs_bwrap = pytest.mark.skipif(bwrap_program() is None, reason="bubblewrap (Debian `bubblewrap`) is not installed or cannot start here")
ROOT = Path(__file__).resolve().parents[3]


@needs_bwrap
def test_the_host_beyond_the_read_roots_does_not_exist_inside(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the data")
    probe = ("import os, json\n"
             f"paths = {[str(ROOT), '/etc/passwd', '/usr/bin/id', '/etc/hostname', str(tmp_path), '/var', '/home']!r}\n"
             "print(json.dumps([os.path.exists(p) for p in paths]))\n"
             "print(os.getuid(), open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
             f"try:\n    open({str(secret)!r})\nexcept OSError as e:\n    print(type(e).__name__)\n")
    r = run_python(probe, hidden=[str(secret)], timeout_s=60)
    assert "mount-view" in r.isolation and "namespaces" in r.isolation, r.isolation
    lines = r.stdout.split("\n")
    assert lines[0] == "[false, false, false, false, false, false, false]", r.stdout
    assert lines[1].split()[1] == "0000000000000000"  # no capability
    assert lines[2] == "PermissionError" and f"read {secret}" in r.blocked  # the hidden path: absent, and still recorded
    assert r.status == "blocked"


@needs_bwrap
def test_a_hidden_distribution_shows_no_file_in_site_packages() -> None:
    """scrna-denoise hides its data by leaving the distribution that ships it out of the view:
    site-packages is bound whole (one bind, not one per entry) and that distribution's folder is
    covered by an empty read-only tmpfs, so none of its files exist inside."""
    sp = next(p for p in site.getsitepackages() if os.path.isdir(os.path.join(p, "numpy")))
    init = os.path.join(sp, "numpy", "__init__.py")
    probe = (f"import os\nprint(os.listdir({os.path.join(sp, 'numpy')!r}), os.path.exists({init!r}))\n"
             f"try:\n    open({os.path.join(sp, 'numpy', 'x')!r}, 'w')\nexcept OSError as e:\n    print(type(e).__name__)\n"
             "import numpy\nprint(numpy.__file__)\n")  # an empty folder: at most a namespace package, no file
    r = run_python(probe, hidden=[init], timeout_s=60)
    assert r.stdout.split("\n")[:3] == ["[] False", "PermissionError", "None"], (r.stdout, r.stderr[-500:])
    r = run_python("import numpy\nprint(numpy.__file__)", timeout_s=60)
    assert r.stdout.strip() == init, (r.stdout, r.stderr[-500:])


@needs_bwrap
def test_the_pth_files_show_empty_so_none_runs_at_the_start(tmp_path: Path) -> None:
    sp = next(p for p in site.getsitepackages() if os.path.isdir(os.path.join(p, "numpy")))
    pths = sorted(n for n in os.listdir(sp) if n.endswith(".pth"))
    if not pths:
        pytest.skip("this site-packages holds no .pth file")
    r = run_python(f"import os\nprint(sum(os.path.getsize(os.path.join({sp!r}, n)) for n in {pths!r}))", timeout_s=60)
    assert r.stdout.strip() == "0", (r.stdout, r.stderr[-500:])


def test_a_folder_mostly_shown_is_bound_once_with_the_rest_covered(tmp_path: Path) -> None:
    """Each bind costs bubblewrap a read of the mount table (575 binds: 0.9 s a start)."""
    from sia_engine.sandbox.view import _binds

    big = tmp_path / "site"
    big.mkdir()
    shown = []
    for i in range(20):
        (big / f"d{i}").mkdir()
        shown.append(str(big / f"d{i}"))
    (big / "hidden").mkdir()
    (big / "x.pth").write_text("import os")
    argv = _binds(shown)
    assert argv[:3] == ["--ro-bind", str(big), str(big)] and argv.count("--ro-bind") == 2, argv
    assert argv[3:] == ["--tmpfs", str(big / "hidden"), "--remount-ro", str(big / "hidden"), "--ro-bind", argv[-2], str(big / "x.pth")]
    assert os.path.getsize(argv[-2]) == 0
    # a link among what it must not show cannot be covered: entry by entry, as before
    (big / "link").symlink_to(tmp_path)
    argv = _binds(shown)
    assert argv.count("--ro-bind") == 20 and str(big / "link") not in argv and "--tmpfs" not in argv
    # and so where an entry to show is a link (alone it shows its target)
    (big / "link").unlink()
    (big / "d0").rmdir()
    (big / "d0").symlink_to(big / "d1")
    argv = _binds(shown)
    assert ("--ro-bind", str(big), str(big)) not in {tuple(argv[i:i + 3]) for i in range(len(argv) - 2)}
    # too few entries to show: bound one by one
    assert _binds(shown[1:4]).count("--ro-bind") == 3


@needs_bwrap
def test_a_crash_inside_the_view_is_reported_as_its_signal() -> None:
    """bwrap exits 128 + n for a child killed by signal n; the jail reports -n, as without it."""
    r = run_python("import ctypes\nctypes.string_at(0)\n", timeout_s=60)
    assert r.exit_code == -11 and r.status == "error", (r.exit_code, r.status)


def test_without_bubblewrap_the_sandbox_runs_through_unshare_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jail, "view_launcher", lambda *a, **k: None)
    r = run_python("print(6 * 7)", timeout_s=60)
    assert r.status == "ok" and r.stdout.strip() == "42" and "mount-view" not in r.isolation, (r.status, r.isolation)


def test_the_views_command_line_binds_read_only_skips_what_a_parent_shows_and_adds_devices(tmp_path: Path) -> None:
    from sia_engine.sandbox.view import view_launcher

    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "a.so").write_text("")
    (tmp_path / "link").symlink_to("lib")
    node = tmp_path / "nvidia0"
    node.write_text("")
    argv = view_launcher([str(tmp_path / "lib"), str(tmp_path / "lib" / "a.so"), str(tmp_path / "link"), "/proc/cpuinfo", "/dev/null"],
                         "/scratch", program="/bin/bwrap", devices=[str(node), "/dev/not-there"])
    assert argv is not None and argv[0] == "/bin/bwrap" and argv[-1] == "--"
    pairs = [tuple(argv[i:i + 3]) for i in range(len(argv) - 2)]
    assert ("--ro-bind", str(tmp_path / "lib"), str(tmp_path / "lib")) in pairs
    assert ("--symlink", "lib", str(tmp_path / "link")) in pairs
    assert str(tmp_path / "lib" / "a.so") not in argv and "/proc/cpuinfo" not in argv and "/dev/null" not in argv  # shown already, or fresh
    assert ("--dev-bind", str(node), str(node)) in pairs and "/dev/not-there" not in argv
    assert ("--bind", "/scratch", "/scratch") in pairs and "--cap-drop" in argv and "--unshare-all" in argv


def test_the_empty_file_is_made_again_when_a_temp_cleaner_removed_it() -> None:
    from sia_engine.sandbox.view import _empty_file

    first = _empty_file()
    os.unlink(first)
    again = _empty_file()
    assert os.path.isfile(again) and os.path.getsize(again) == 0
