"""`sia experiment` on a real Ray cluster made here (two nodes through Ray's own cluster
utilities, one CPU each): the store it records is the local executor's, event for event, even
when a worker process is killed mid-arm."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from sia_engine.experiment.arms import run_experiment
from sia_engine.experiment.executors import Setup
from sia_engine.experiment.on_ray import RayExecutor
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import LoopConfig
from store import Store
from tests.loop_helpers import TASK, scripted, sometimes_wrong

ray = pytest.importorskip("ray", reason="needs Ray (pip install 'sia-engine[ray]'; the test extra has it)")
ROOT = Path(__file__).resolve().parents[3]
CONFIG = LoopConfig(task="arith", train_episodes=4, val_episodes=4, samples=2, levers=("scaffold", "weights"))
PIDS = Path(os.environ.get("SIA_TEST_PIDS", "/tmp/sia-ray-test-pids"))


def make(delay: float = 0.0) -> Setup:
    """Built on a worker (pickled by reference): the arith task and a scripted model; it notes
    the worker's pid, so that the test can kill it."""
    PIDS.mkdir(exist_ok=True)
    (PIDS / str(os.getpid())).write_text("")
    return TASK, scripted(sometimes_wrong, delay=delay), RulePolicy


def slow() -> Setup:
    return make(0.02)


def hangs_once() -> Setup:
    """The first worker to build its setup hangs (sleeps far past the stall timeout); later ones work."""
    PIDS.mkdir(exist_ok=True)
    try:
        with open(PIDS / "hung", "x"):
            pass
    except FileExistsError:
        return make()
    time.sleep(600)
    raise AssertionError("not cancelled")


@pytest.fixture(scope="module")
def cluster():  # type: ignore[no-untyped-def]
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "SIA_TEST_PIDS": str(PIDS)}}, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


def events(path: Path) -> dict[str, list[str]]:
    with Store.open(path, read_only=True) as s:
        return {b.name: [e.id for e in s.log.read(b.name, after_seq=-1)] for b in s.log.branches()}


class Notes(Hooks):
    def __init__(self) -> None:
        self.said: list[str] = []

    def note(self, message: str) -> None:
        self.said.append(message)


def experiment(path: Path, executor: RayExecutor | None, hooks: Hooks | None = None) -> dict[str, list[str]]:
    with Store.create(path) as s:
        run_experiment(s, task=TASK, model=scripted(sometimes_wrong), feedback=RulePolicy, config=CONFIG, name="e",
                       arms=("scaffold", "both"), seeds=(0, 1), iterations=2, executor=executor, hooks=hooks)
    return events(path)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    return experiment(tmp_path_factory.mktemp("local") / "s", None)


def test_ray_records_the_local_executors_store_event_for_event(cluster, local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ex = RayExecutor(make, workers=2)
    got = experiment(tmp_path / "s", ex)
    assert got == local and len(got) == 5  # the prefix and four arms, every id the same
    assert len(ex.pulled) >= 4 * 3  # a bundle after each iteration and after each test score
    with Store.open(tmp_path / "s", read_only=True) as s:
        from sia_engine.domain.integrity import verify_store

        assert verify_store(s.log, s.blobs).ok


def test_a_worker_killed_mid_arm_is_resumed_and_the_store_is_the_same(cluster, local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for p in PIDS.glob("*"):
        p.unlink()
    killed: list[int] = []

    def killer() -> None:  # the first worker that starts an arm, killed a moment later
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            pids = sorted(PIDS.glob("*"), key=lambda p: p.stat().st_mtime)
            if pids:
                time.sleep(0.5)
                pid = int(pids[0].name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    ex, notes = RayExecutor(slow, workers=2), Notes()
    got = experiment(tmp_path / "s", ex, notes)
    t.join()
    assert killed, "no worker was killed"
    assert any("its worker was lost" in n for n in notes.said), notes.said  # the arm was started again, from what was pulled
    assert got == local


def broken() -> Setup:
    from sia_engine.errors import DataChanged

    raise DataChanged("data file x.h5ad", "sha256 aaa", "sha256 bbb")  # what a worker with other data would raise


def test_an_arm_whose_own_code_fails_is_not_retried_and_its_error_comes_through(cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from sia_engine.errors import DataChanged

    notes = Notes()
    with pytest.raises(DataChanged, match="x.h5ad"):
        experiment(tmp_path / "s", RayExecutor(broken, workers=2), notes)
    assert not any("worker was lost" in n for n in notes.said)


def test_a_hung_worker_is_taken_for_lost_after_the_stall_timeout_and_the_store_is_the_same(cluster, local, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (PIDS / "hung").unlink(missing_ok=True)
    ex, notes = RayExecutor(hangs_once, workers=2, stall_s=45), Notes()
    got = experiment(tmp_path / "s", ex, notes)
    assert any("sent nothing for 45 s" in n for n in notes.said), notes.said
    assert got == local


def test_a_stall_timeout_must_be_positive() -> None:
    from sia_engine.errors import SiaError

    with pytest.raises(SiaError, match="above 0"):
        RayExecutor(make, stall_s=0)
    with pytest.raises(SiaError, match="at least one"):
        RayExecutor(make, workers=0)


def test_folders_of_killed_workers_are_swept_and_nothing_else(tmp_path: Path) -> None:
    from sia_engine.experiment.on_ray import sweep_workers_folders

    dead = 2 ** 22 + 12345  # above the usual pid_max: no such process
    ns = os.stat("/proc/self/ns/pid").st_ino
    (tmp_path / f"sia-arm-{ns}-{dead}-abc").mkdir()
    (tmp_path / f"sia-arm-{ns}-{dead}-abc" / "store").mkdir()
    (tmp_path / f"sia-baseline-{ns}-{dead}-x").mkdir()
    (tmp_path / f"sia-arm-{ns + 1}-{dead}-other").mkdir()  # another PID namespace (a container): its PIDs mean nothing here
    (tmp_path / f"sia-arm-{ns}-{os.getpid()}-live").mkdir()  # a running worker's
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / f"sia-arm-{ns}-{dead}-link").symlink_to(tmp_path / "elsewhere")  # a link: never followed or removed
    (tmp_path / f"sia-arm-{ns}-{dead}-file").write_text("")
    gone = sweep_workers_folders(str(tmp_path))
    assert sorted(Path(g).name for g in gone) == [f"sia-arm-{ns}-{dead}-abc", f"sia-baseline-{ns}-{dead}-x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["elsewhere", f"sia-arm-{ns + 1}-{dead}-other", f"sia-arm-{ns}-{os.getpid()}-live",
                                                                 f"sia-arm-{ns}-{dead}-link", f"sia-arm-{ns}-{dead}-file"])
