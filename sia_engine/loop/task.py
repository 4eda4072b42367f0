"""The ``Task`` protocol: named tasks with episodes per split, prompts built from the scaffold,
and scoring. Implementations live in ``tasks/``; the loop sees only this protocol."""

from __future__ import annotations

import random
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from sia_engine.domain.payloads import ToolCall
from sia_engine.domain.scaffold import Scaffold
from sia_engine.models.protocol import Message

__all__ = ["Episode", "Score", "Failure", "Task", "DrawsRandomAnswers", "ScoresConcurrently", "KeysScores", "NeedsResources", "ScopesCache", "scope_cache", "AnswersFromOptions", "answer_options", "chat_messages"]

# tampering: the output interfered with its own scoring (the scorer's channel forged, timings impossible)
Failure = Literal["none", "format", "abstain", "content", "tampering"]


class Episode(msgspec.Struct, frozen=True):
    """One task instance. ``gold`` is the reference answer where the task has one."""

    id: str
    split: Literal["train", "val", "test"]
    input: str
    gold: str | None = None
    meta: dict[str, Any] = {}


class Score(msgspec.Struct, frozen=True):
    """A scored output: ``failure`` says what kind of miss it was, for the Feedback Agent;
    ``tools`` records the tool calls scoring made (a sandbox run, say), for the log."""

    score: float
    failure: Failure = "none"
    metrics: dict[str, float] = {}
    tools: tuple[ToolCall, ...] = ()


@runtime_checkable
class Task(Protocol):
    name: str
    description: str
    # The shape of a well-formed answer (field names, types, ranges, placeholders), for scaffold
    # patches; never an answer itself: ``parse_answer(format_hint)`` is None (tested per task).
    format_hint: str
    answer_prefix: str  # text the engine writes at the start of every answer ("" for none)

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        """Episodes of ``split``, in a deterministic order."""
        ...

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        """The prompt for ``episode`` under ``scaffold``."""
        ...

    def score(self, episode: Episode, output: str) -> Score: ...

    def parse_answer(self, output: str) -> Any | None:
        """The answer in ``output`` as the scorer reads it, or None when it holds no valid answer."""
        ...

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        """Scores of the task's reference methods on ``split``, measured as versions are
        (empty when the task has none)."""
        ...

    def scaffold(self) -> Scaffold:
        """The scaffold a run starts from (prompt, decoding limits suited to the task)."""
        ...


# Optional features of a task, each checked with ``isinstance`` where it is used.


@runtime_checkable
class DrawsRandomAnswers(Protocol):
    """A task that can draw a uniform random answer (the random-search baseline)."""

    def random_answer(self, rng: random.Random, episode: Episode) -> str:
        """A random well-formed answer to ``episode``, drawn with ``rng``."""
        ...


@runtime_checkable
class ScoresConcurrently(Protocol):
    """A task that says whether ``score`` may run on several threads at once (a replay then
    scores on every core); a task without the attribute is scored on one thread."""

    concurrent_scoring: bool


@runtime_checkable
class KeysScores(Protocol):
    """A task whose scorer caches: outputs with the same key score the same. Scoring on several
    threads asks a later output with an earlier one's key only once the earlier is scored, so the
    log (which output ran, which was a cache hit) is the one a serial run records."""

    def score_key(self, episode: Episode, output: str) -> str | None:
        """The cache key of ``output`` on ``episode`` (None: scoring it runs nothing)."""
        ...


@runtime_checkable
class ScopesCache(Protocol):
    """A task whose scorer caches, one cache per scope (an experiment's arm, one baseline's seed):
    a branch's record then says ``cached`` only of what that branch itself ran, wherever it runs
    (one process for every arm, or a worker per arm), and a bundle of it names no run it lacks."""

    def cache_scope(self, scope: str) -> None:
        """Score from here on with the cache of ``scope`` (a new, empty one where it changes)."""
        ...


def scope_cache(task: object, scope: str) -> None:
    """``task.cache_scope(scope)`` where the task scopes its cache; nothing otherwise."""
    if isinstance(task, ScopesCache):
        task.cache_scope(scope)


@runtime_checkable
class AnswersFromOptions(Protocol):
    """A task whose answers come from a closed set (lawbench-charge's charges): the model answers
    each episode with one of ``answer_options`` by its own likelihood (``Request.options``), so
    every output is a valid answer."""

    def answer_options(self, episode: Episode) -> tuple[str, ...]: ...


def answer_options(task: object, episode: Episode) -> tuple[str, ...]:
    """The closed set ``task`` answers ``episode`` from (empty: free text)."""
    return tuple(task.answer_options(episode)) if isinstance(task, AnswersFromOptions) else ()


@runtime_checkable
class NeedsResources(Protocol):
    """A task that needs more than a CPU and any model: ``requires`` names what ("gpu",
    "code-model": a model that writes GPU kernels)."""

    requires: tuple[str, ...]


def chat_messages(scaffold: Scaffold, user: str) -> tuple[Message, ...]:
    """The usual prompt: system prompt and output format, few-shot turns, then the input."""
    system = "\n\n".join(x for x in (scaffold.system_prompt, scaffold.output_format) if x)
    msgs: list[Message] = [Message("system", system)] if system else []
    for ex in scaffold.examples:
        msgs += [Message("user", ex.input), Message("assistant", ex.output)]
    body = scaffold.solution_template.replace("{input}", user) if "{input}" in scaffold.solution_template else user
    msgs.append(Message("user", body))
    return tuple(msgs)
