"""Where an experiment's arms run: one after another in this process (``LocalExecutor``), or as
Ray tasks (``RayExecutor``), each on a worker with its own store.

An arm (``ArmJob``: an arm and seed, its branch forked from the prefix) is the same steps either
way (``run_arm``): the loop on its branch for its iterations, under its budget, then its head's
test score. The driver records the fork itself, when the arm starts (its wall time runs from it).

With Ray, the driver (the only writer of the user's store) sends each arm a bundle of the prefix
and of what the driver holds of the arm's branch; the worker pulls it into a store of its own,
builds the task, model and Feedback Agent with ``make`` (a picklable function, called on the
worker), and runs the arm one iteration at a time. After every iteration, and after the test
score, it sends back a bundle of its branch, which the driver checks and pulls
(``sia_engine.domain.bundle``). A worker that dies (a killed process, a lost node) has its arm
started again on another worker from what the driver has pulled; the loop resumes from the log,
so the finished store holds the same events, id for id, as the local executor records.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from sia_engine.domain.bundle import pull_bundle, write_bundle
from sia_engine.domain.payloads import Budget
from sia_engine.domain.projection import fold, records
from sia_engine.errors import SiaError
from sia_engine.domain.events import Event, decode, encode
from sia_engine.domain.history import fork
from sia_engine.experiment.baselines import baselines_to_do, best_of_k, random_search, record_baselines, reference_methods, test_episodes
from sia_engine.experiment.table import Spending, spent
from sia_engine.loop.feedback.rule import FeedbackAgent
from sia_engine.loop.hooks import Hooks
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.loop.task import Task, scope_cache
from sia_engine.models.protocol import Model
from store import EventLog, Store

__all__ = ["ArmJob", "Setup", "LocalExecutor", "RayExecutor", "run_arm", "ensure_fork", "evaluate_test", "WorkerLost"]

Setup = tuple[Task, Model, Callable[[], FeedbackAgent]]  # what ``make`` builds on a worker


class WorkerLost(SiaError):
    """An arm's worker died more often than the executor restarts it."""

    def __init__(self, branch: str, attempts: int, last: str) -> None:
        self.branch = branch
        super().__init__(f"arm {branch!r}: its worker died {attempts} times (last: {last}); what was pulled is kept, "
                         f"run the experiment again to resume it")


class ArmJob(msgspec.Struct, frozen=True):
    """One arm and seed: its branch (forked from ``base``), levers, iterations and budget."""

    arm: str
    seed: int
    branch: str
    base: str
    levers: tuple[str, ...]
    iterations: int
    budget: Budget | None = None
    at: int = 0  # where the branch forks from the prefix, and what its branch_forked says
    overrides: dict[str, Any] = {}
    reason: str = ""


def ensure_fork(store: Store, job: ArmJob) -> None:
    """The arm's fork, recorded when the arm starts (its wall time and wall budget run from it)."""
    if job.branch not in {b.name for b in store.log.branches()}:
        fork(store.log, job.branch, source=job.base, at_seq=job.at, blobs=store.blobs, overrides=job.overrides, reason=job.reason)


def evaluate_test(loop: Loop) -> float:
    """Score the loop's head once on the task's test split (as many episodes as validation uses,
    the same protocol and seeds), recorded as trajectories and a ``version_evaluated`` of split
    ``test``; a head already scored there is not scored again. The loop never does this itself:
    only an experiment's last step does, so no decision ever reads the test split."""
    head = loop.hist.state.head_version
    assert head is not None
    done = head.score("test")
    if done is not None:
        return done
    episodes = test_episodes(loop)
    if not episodes:
        raise SiaError(f"task {loop.task.name!r} has no test episodes")
    loop.evaluate(head, decide=False, split="test", episodes=episodes)
    score = loop.hist.state.versions[head.version_id].score("test")
    assert score is not None
    return score


def _out_of_budget(log: EventLog, branch: str, budget: Budget) -> bool:
    """Asked before each iteration of an arm: has its branch spent one of its limits?"""
    [used] = fold([Spending()], records(log, branch, own=True))
    return bool(budget.spent(spent(used)))


def _arm_config(config: LoopConfig, job: ArmJob, iterations: int) -> LoopConfig:
    return msgspec.structs.replace(config, levers=job.levers, seed=job.seed, iterations=iterations)


def run_arm(store: Store, job: ArmJob, setup: Setup, config: LoopConfig, hooks: Hooks | None = None,
            after: Callable[[], None] = lambda: None, iterations: int | None = None) -> Loop:
    """The arm's loop on its branch up to ``iterations`` (default: the job's), under its budget;
    ``after`` is called when it stops. Returns the loop (``evaluate_test`` scores its head)."""
    task, model, feedback = setup
    n = job.iterations if iterations is None else iterations
    scope_cache(task, job.branch)  # what the branch records is the same wherever it runs
    loop = Loop(store, task=task, model=model, feedback=feedback(), config=_arm_config(config, job, n),
                branch=job.branch, hooks=hooks)
    loop.run(stop=None if job.budget is None else functools.partial(_out_of_budget, store.log, job.branch, job.budget))
    after()
    return loop


class LocalExecutor:
    """The arms one after another, in this process, on the user's store."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup

    def run(self, store: Store, jobs: list[ArmJob], config: LoopConfig, hooks: Hooks | None = None) -> None:
        for job in jobs:
            ensure_fork(store, job)
            evaluate_test(run_arm(store, job, self.setup, config, hooks))

    def baselines(self, loop: Loop, *, experiment: str, k: int, seeds: Sequence[int]) -> None:
        record_baselines(loop, experiment=experiment, k=k, seeds=seeds)


def _bundle_bytes(store: Store, branches: list[str]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sia-bundle-") as d:
        path = Path(d) / "b"
        write_bundle(store, branches, path)
        return path.read_bytes()


def _pull_bytes(store: Store, data: bytes, only: str | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="sia-bundle-") as d:
        path = Path(d) / "b"
        path.write_bytes(data)
        pull_bundle(store, path, only=None if only is None else (only,))


def arm_worker(make: Callable[[], Setup], config: dict[str, Any], job: dict[str, Any], start: bytes, threads: int) -> Iterator[bytes]:
    """On a Ray worker: the arm from ``start`` (a bundle of the prefix and of the branch so far),
    one iteration at a time, a bundle of its branch after each and after its test score."""
    import torch  # noqa: PLC0415 - on the worker only

    torch.set_num_threads(threads)
    cfg, arm = msgspec.convert(config, LoopConfig), msgspec.convert(job, ArmJob)
    with tempfile.TemporaryDirectory(prefix="sia-arm-") as d, Store.create(Path(d) / "store") as store:
        _pull_bytes(store, start)
        setup = make()
        loop = run_arm(store, arm, setup, cfg, iterations=0) if arm.iterations == 0 else None
        for k in range(1, arm.iterations + 1):
            before = store.log.branch(arm.branch).head_id
            loop = run_arm(store, arm, setup, cfg, iterations=k)
            if store.log.branch(arm.branch).head_id != before:
                yield _bundle_bytes(store, [arm.branch])
            if loop.hist.state.iteration + 1 < k:  # stopped by its budget: no further iteration starts
                break
        assert loop is not None
        evaluate_test(loop)
        yield _bundle_bytes(store, [arm.branch])


Wire = list[tuple[str, int, bytes]]  # events as (kind, schema, payload), for the driver to record


def baseline_worker(make: Callable[[], Setup], config: dict[str, Any], start: bytes, base: str, what: str, experiment: str, k: int,
                    seed: int, threads: int) -> Wire:
    """On a Ray worker: one seed's random search (its event) or best-of-k (the samples it records
    on a copy of the prefix, then its event), as the driver will record them."""
    import torch  # noqa: PLC0415 - on the worker only

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="sia-baseline-") as d, Store.create(Path(d) / "store") as store:
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


class RayExecutor:
    """Each arm as a Ray task (see the module's docstring). ``make`` builds (task, model, feedback
    factory) on a worker; ``address``: a running cluster (None: the one ``ray.init`` already
    joined, else a local one); ``workers``: arms at once; ``threads``: torch threads per worker."""

    def __init__(self, make: Callable[[], Setup], *, address: str | None = None, workers: int = 2, threads: int = 1,
                 restarts: int = 3, runtime_env: dict[str, Any] | None = None) -> None:
        self.make, self.address, self.workers, self.threads = make, address, workers, threads
        self.restarts, self.runtime_env = restarts, runtime_env
        self.pulled: list[tuple[str, float, int]] = []  # (branch, seconds to pull, bytes) per bundle pulled

    def _remote(self) -> Any:
        import ray  # noqa: PLC0415 - an optional extra: sia-engine[ray]

        if not ray.is_initialized():
            ray.init(address=self.address, runtime_env=self.runtime_env, log_to_driver=False)
        return ray.remote(num_cpus=self.threads, max_retries=0, num_returns="streaming")(arm_worker)

    def run(self, store: Store, jobs: list[ArmJob], config: LoopConfig, hooks: Hooks | None = None) -> None:
        import ray  # noqa: PLC0415

        remote, inbox = self._remote(), queue.Queue[tuple[ArmJob, int, bytes | BaseException | _Fatal | None]]()
        cfg = msgspec.to_builtins(config)

        gens: dict[str, Any] = {}  # branch -> the Ray generator running it (cancelled when the driver stops)

        def consume(job: ArmJob, attempt: int, start: bytes) -> None:
            try:
                gen = gens[job.branch] = remote.remote(self.make, cfg, msgspec.to_builtins(job), start, self.threads)
                for ref in gen:
                    inbox.put((job, attempt, ray.get(ref)))
                inbox.put((job, attempt, None))
            except ray.exceptions.RayTaskError as e:  # the arm's own code raised: it would raise again, so it is not retried
                inbox.put((job, attempt, _Fatal(e.cause if isinstance(e.cause, BaseException) else e)))
            except ray.exceptions.UnserializableException as e:  # the same, with an error that does not pickle
                inbox.put((job, attempt, _Fatal(SiaError(f"arm {job.branch!r} failed on its worker: {e}"))))
            except BaseException as e:  # noqa: BLE001 - a lost worker or node: the driver restarts the arm
                inbox.put((job, attempt, e))

        def start(job: ArmJob, attempt: int) -> _Running:
            ensure_fork(store, job)
            data = _bundle_bytes(store, [job.base, job.branch])  # what the driver holds: the arm resumes from it
            t = threading.Thread(target=consume, args=(job, attempt, data), daemon=True, name=f"sia-arm-{job.branch}")
            t.start()
            return _Running(job, attempt, t)

        todo, running = list(jobs), dict[str, _Running]()
        try:
            while todo or running:
                while todo and len(running) < self.workers:
                    job = todo.pop(0)
                    running[job.branch] = start(job, 0)
                job, attempt, item = inbox.get()
                if job.branch not in running or running[job.branch].attempts != attempt:
                    continue  # from an attempt given up on
                if isinstance(item, bytes):
                    t0 = time.perf_counter()
                    _pull_bytes(store, item, only=job.branch)  # the driver: the only writer of the user's store
                    self.pulled.append((job.branch, time.perf_counter() - t0, len(item)))
                    if hooks is not None:
                        hooks.note(f"{job.branch}: pulled {len(item):,} bytes")
                elif item is None:
                    running.pop(job.branch)
                elif isinstance(item, _Fatal):
                    raise item.error
                else:
                    r = running.pop(job.branch)
                    if r.attempts >= self.restarts:
                        raise WorkerLost(job.branch, r.attempts + 1, f"{type(item).__name__}: {str(item)[:300]}")
                    if hooks is not None:
                        hooks.note(f"{job.branch}: its worker was lost ({type(item).__name__}); resuming it from what was pulled")
                    with contextlib.suppress(Exception):
                        ray.cancel(gens[job.branch], force=True)
                    running[job.branch] = start(job, r.attempts + 1)
        finally:
            for branch in running:  # the driver stops (an error, Ctrl-C): nothing keeps running for it
                with contextlib.suppress(Exception):
                    ray.cancel(gens[branch], force=True)

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
