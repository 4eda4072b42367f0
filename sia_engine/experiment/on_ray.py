"""The Ray executor: each arm of an experiment as a Ray task on a worker with a store of its own
(``sia_engine.experiment.executors`` says what an arm is, and runs arms locally).

The driver (the only writer of the user's store) sends each arm a bundle of the prefix and of what
the driver holds of the arm's branch; the worker pulls it into a store of its own, builds the task,
model and Feedback Agent with ``make`` (a picklable function, called on the worker), and runs the
arm one iteration at a time. After every iteration, and after the test score, it sends back a
bundle of what its branch grew since its last, which the driver checks and pulls
(``sia_engine.domain.bundle``). A worker that dies (a killed process, a lost node), or that sends
nothing for ``stall_s`` (a hung one), has its arm started again on another worker from what the
driver has pulled; the loop resumes from the log, so the finished store holds the same events,
id for id, as the local executor records. Folders that killed workers left behind are removed by
the next worker on that machine.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sia_engine.domain.bundle import pull_bundle
from sia_engine.domain.bundle_write import write_bundle
from sia_engine.domain.events import Event, decode, encode
from sia_engine.errors import SiaError
from sia_engine.experiment.baselines import baselines_to_do, best_of_k, random_search, reference_methods, test_episodes
from sia_engine.experiment.executors import ArmJob, Setup, ensure_fork, finish_arm, run_arm
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import scope_cache
from store import Store

__all__ = ["RayExecutor", "WorkerLost", "arm_worker", "baseline_worker", "sweep_workers_folders"]


class WorkerLost(SiaError):
    """An arm's worker died more often than the executor restarts it."""

    def __init__(self, branch: str, attempts: int, last: str) -> None:
        self.branch = branch
        super().__init__(f"arm {branch!r}: its worker died {attempts} times (last: {last}); what was pulled is kept, "
                         f"run the experiment again to resume it")


def _bundle_bytes(store: Store, branches: list[str], since: dict[str, int] | None = None) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sia-bundle-") as d:
        path = Path(d) / "b"
        write_bundle(store, branches, path, since=since)
        return path.read_bytes()


def _pull_bytes(store: Store, data: bytes, only: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="sia-bundle-") as d:
        path = Path(d) / "b"
        path.write_bytes(data)
        pull_bundle(store, path, only=None if only is None else (only,))


_WORKER_FOLDER = re.compile(r"sia-(?:arm|baseline)-(\d+)-(\d+)-")


def _pid_namespace() -> int:
    """This process's PID namespace (its inode): a PID means a process only within it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def worker_folder_prefix(kind: str) -> str:
    return f"sia-{kind}-{_pid_namespace()}-{os.getpid()}-"


def sweep_workers_folders(root: str | None = None) -> list[str]:
    """Remove the store folders that workers killed on this machine left behind (a killed
    process runs no cleanup): folders named by a worker's PID namespace and PID where that
    namespace is this process's and no process has that PID (a worker in another container
    sharing the temp folder is never taken for dead), owned by this user, not links. Returns what
    it removed."""
    base = Path(root or tempfile.gettempdir())
    gone = []
    for entry in os.scandir(base):
        m = _WORKER_FOLDER.match(entry.name)
        if m is None or int(m.group(1)) != _pid_namespace() or not entry.is_dir(follow_symlinks=False) \
                or entry.stat(follow_symlinks=False).st_uid != os.geteuid():
            continue
        try:
            os.kill(int(m.group(2)), 0)
            continue  # its process still runs
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        gone.append(entry.path)
    return gone


def arm_worker(make: Callable[[], Setup], config: dict[str, Any], job: dict[str, Any], start: bytes, threads: int) -> Iterator[bytes]:
    """On a Ray worker: the arm from ``start`` (a bundle of the prefix and of the branch so far),
    one iteration at a time, a bundle of what its branch grew after each and after its test score."""
    import torch  # noqa: PLC0415 - on the worker only

    torch.set_num_threads(threads)
    cfg, arm = msgspec.convert(config, LoopConfig), msgspec.convert(job, ArmJob)
    sweep_workers_folders()
    with tempfile.TemporaryDirectory(prefix=worker_folder_prefix("arm")) as d, Store.create(Path(d) / "store") as store:
        _pull_bytes(store, start)
        sent = store.log.branch(arm.branch).head_seq  # what the driver holds
        setup = make()
        loop = run_arm(store, arm, setup, cfg, iterations=0) if arm.iterations == 0 else None
        for k in range(1, arm.iterations + 1):
            loop = run_arm(store, arm, setup, cfg, iterations=k)
            if store.log.branch(arm.branch).head_seq != sent:
                yield _bundle_bytes(store, [arm.branch], since={arm.branch: sent})
                sent = store.log.branch(arm.branch).head_seq
            if loop.hist.state.iteration + 1 < k:  # stopped by its budget: no further iteration starts
                break
        assert loop is not None
        finish_arm(loop, arm)
        yield _bundle_bytes(store, [arm.branch], since={arm.branch: sent})


Wire = list[tuple[str, int, bytes]]  # events as (kind, schema, payload), for the driver to record


def baseline_worker(make: Callable[[], Setup], config: dict[str, Any], start: bytes, base: str, what: str, experiment: str, k: int,
                    seed: int, threads: int) -> Wire:
    """On a Ray worker: one seed's random search (its event) or best-of-k (the samples it records
    on a copy of the prefix, then its event), as the driver will record them."""
    import torch  # noqa: PLC0415 - on the worker only

    torch.set_num_threads(threads)
    sweep_workers_folders()
    with tempfile.TemporaryDirectory(prefix=worker_folder_prefix("baseline")) as d, Store.create(Path(d) / "store") as store:
        _pull_bytes(store, start)
        task, model, feedback = make()
        loop = Loop(store, task=task, model=model, feedback=feedback(), config=msgspec.convert(config, LoopConfig), branch=base)
        scope_cache(task, f"{experiment}:{what}:{seed}")
        if what == "random-search":
            made = random_search(task, loop.val, test_episodes(loop), experiment=experiment, k=k, seed=seed)
            return [] if made is None else [(made.kind(), made.SCHEMA, encode(made).payload)]
        head = store.log.branch(base).head_seq
        made = best_of_k(loop, experiment=experiment, k=k, seed=seed)
        return [(e.kind, e.schema, e.payload) for e in store.log.read(base, after_seq=head)] + [(made.kind(), made.SCHEMA, encode(made).payload)]


@dataclass
class _Fatal:
    error: BaseException  # what an arm's own code raised on its worker


@dataclass
class _Running:
    job: ArmJob
    attempts: int
    thread: threading.Thread


class _Arms:
    """The driver's side of the arms running on Ray: each arm's thread reading its generator,
    what came last and when, and what to do with each thing that comes."""

    def __init__(self, ex: RayExecutor, store: Store, cfg: dict[str, Any], hooks: Hooks | None) -> None:
        self.ex, self.store, self.cfg, self.hooks = ex, store, cfg, hooks
        self.remote = ex._remote()
        self.inbox = queue.Queue[tuple[ArmJob, int, bytes | BaseException | _Fatal | None]]()
        self.running: dict[str, _Running] = {}
        self.gens: dict[str, Any] = {}  # branch -> the Ray generator running it (cancelled when the driver stops)
        self.heard: dict[str, float] = {}  # branch -> when it started or last sent a bundle

    def _consume(self, job: ArmJob, attempt: int, start: bytes) -> None:
        import ray  # noqa: PLC0415

        try:
            gen = self.gens[job.branch] = self.remote.remote(self.ex.make, self.cfg, msgspec.to_builtins(job), start, self.ex.threads)
            for ref in gen:
                self.inbox.put((job, attempt, ray.get(ref)))
            self.inbox.put((job, attempt, None))
        except ray.exceptions.RayTaskError as e:  # the arm's own code raised: it would raise again, so it is not retried
            self.inbox.put((job, attempt, _Fatal(e.cause if isinstance(e.cause, BaseException) else e)))
        except ray.exceptions.UnserializableException as e:  # the same, with an error that does not pickle
            self.inbox.put((job, attempt, _Fatal(SiaError(f"arm {job.branch!r} failed on its worker: {e}"))))
        except BaseException as e:  # noqa: BLE001 - a lost worker or node: the driver restarts the arm
            self.inbox.put((job, attempt, e))

    def start(self, job: ArmJob, attempt: int) -> None:
        ensure_fork(self.store, job)
        data = _bundle_bytes(self.store, [job.base, job.branch])  # what the driver holds: the arm resumes from it
        t = threading.Thread(target=self._consume, args=(job, attempt, data), daemon=True, name=f"sia-arm-{job.branch}")
        t.start()
        self.running[job.branch], self.heard[job.branch] = _Running(job, attempt, t), time.monotonic()

    def step(self) -> None:
        """Wait for what comes next (or for an arm to stall) and act on it."""
        wait = None if self.ex.stall_s is None else max(0.0, min(self.heard[b] for b in self.running) + self.ex.stall_s - time.monotonic())
        try:
            job, attempt, item = self.inbox.get(timeout=wait)
        except queue.Empty:
            now = time.monotonic()
            for branch in [b for b in self.running if now - self.heard[b] >= (self.ex.stall_s or 0)]:
                self.lost(self.running[branch].job, TimeoutError(f"it sent nothing for {self.ex.stall_s:g} s (a hung worker)"))
            return
        if job.branch not in self.running or self.running[job.branch].attempts != attempt:
            return  # from an attempt given up on
        self.heard[job.branch] = time.monotonic()
        if isinstance(item, bytes):
            t0 = time.perf_counter()
            _pull_bytes(self.store, item, only=job.branch)  # the driver: the only writer of the user's store
            self.ex.pulled.append((job.branch, time.perf_counter() - t0, len(item)))
            if self.hooks is not None:
                self.hooks.note(f"{job.branch}: pulled {len(item):,} bytes")
        elif item is None:
            self.running.pop(job.branch)
        elif isinstance(item, _Fatal):
            raise item.error
        else:
            self.lost(job, item)

    def lost(self, job: ArmJob, why: BaseException) -> None:
        r = self.running.pop(job.branch)
        self.cancel(job.branch)
        if r.attempts >= self.ex.restarts:
            raise WorkerLost(job.branch, r.attempts + 1, f"{type(why).__name__}: {str(why)[:300]}")
        if self.hooks is not None:
            self.hooks.note(f"{job.branch}: its worker was lost ({type(why).__name__}: {str(why)[:200]}); resuming it from what was pulled")
        self.start(job, r.attempts + 1)

    def cancel(self, branch: str) -> None:
        import ray  # noqa: PLC0415

        with contextlib.suppress(Exception):
            ray.cancel(self.gens[branch], force=True)

    def cancel_all(self) -> None:
        for branch in self.running:
            self.cancel(branch)


class RayExecutor:
    """Each arm as a Ray task (see the module's docstring). ``make`` builds (task, model, feedback
    factory) on a worker; ``address``: a running cluster (None: the one ``ray.init`` already
    joined, else a local one); ``workers``: arms at once; ``threads``: torch threads per worker;
    ``stall_s``: an arm that sends nothing for this long is taken for lost (a hung worker) and
    started again (None: wait as long as it takes; give more than an iteration can take)."""

    def __init__(self, make: Callable[[], Setup], *, address: str | None = None, workers: int = 2, threads: int = 1,
                 restarts: int = 3, runtime_env: dict[str, Any] | None = None, stall_s: float | None = None) -> None:
        if workers < 1 or threads < 1:
            raise SiaError(f"workers {workers}, threads {threads}: give at least one of each")
        if stall_s is not None and not stall_s > 0:
            raise SiaError(f"stall_s {stall_s!r}: give seconds above 0, or None to wait as long as an arm takes")
        self.make, self.address, self.workers, self.threads = make, address, workers, threads
        self.restarts, self.runtime_env, self.stall_s = restarts, runtime_env, stall_s
        self.pulled: list[tuple[str, float, int]] = []  # (branch, seconds to pull, bytes) per bundle pulled

    def _remote(self) -> Any:
        import ray  # noqa: PLC0415 - an optional extra: sia-engine[ray]

        if not ray.is_initialized():
            ray.init(address=self.address, runtime_env=self.runtime_env, log_to_driver=False)
        return ray.remote(num_cpus=self.threads, max_retries=0, num_returns="streaming")(arm_worker)

    def run(self, store: Store, jobs: list[ArmJob], config: LoopConfig, hooks: Hooks | None = None) -> None:
        arms = _Arms(self, store, msgspec.to_builtins(config), hooks)
        todo = list(jobs)
        try:
            while todo or arms.running:
                while todo and len(arms.running) < self.workers:
                    arms.start(todo.pop(0), 0)
                arms.step()
        finally:
            arms.cancel_all()  # the driver stops (an error, Ctrl-C): nothing keeps running for it

    def baselines(self, loop: Loop, *, experiment: str, k: int, seeds: Sequence[int]) -> None:
        """Each seed's random search and best-of-k computed on a worker, all at once; recorded
        here in the local executor's order (the references and searches, then each best-of-k)."""
        import ray  # noqa: PLC0415

        refs, searches, sampled = baselines_to_do(loop, experiment=experiment, k=k, seeds=seeds)
        if not searches and not sampled and not refs:
            return
        remote = ray.remote(num_cpus=self.threads, max_retries=self.restarts)(baseline_worker)
        start, cfg = _bundle_bytes(loop.store, [loop.branch]), msgspec.to_builtins(loop.config)
        ask = [(w, s) for w, seeds_of in (("random-search", searches), ("best-of-k", sampled)) for s in seeds_of]
        got = dict(zip(ask, ray.get([remote.remote(self.make, cfg, start, loop.branch, w, experiment, k, s, self.threads) for w, s in ask]),
                       strict=True))
        todo: list[Event] = [*reference_methods(loop.task, experiment=experiment)] if refs else []
        todo += [decode(*e) for s in searches for e in got[("random-search", s)]]
        if todo:
            loop.hist.record(*todo)
        for s in sampled:
            wire = got[("best-of-k", s)]
            for e in wire[:-1]:  # the samples, one output at a time (as a step records them), then the score
                loop.hist.record(decode(*e))
            loop.hist.record(decode(*wire[-1]))
