"""Scripted models for loop tests: deterministic answers to the built-in arith task."""

from __future__ import annotations

import hashlib
import time

from sia_engine.models.protocol import Request, ScriptedModel
from tasks import get_task

TASK = get_task("arith")
GOLD = {e.input: e.gold for s in ("train", "val", "test") for e in TASK.episodes(s)}


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def answers_in_sentences_until_told(request: Request, adapter: str | None) -> str:
    """Right numbers, but in a sentence unless the system prompt asks for the number only;
    with any adapter, a wrong bare number (training makes this model worse)."""
    q = request.messages[-1].content
    gold = GOLD.get(q, "0")
    if adapter is not None:
        return str(int(gold) + 1)
    told = any("number only" in m.content for m in request.messages if m.role == "system")
    return gold if told else f"The answer is {gold}."


def sometimes_wrong(request: Request, adapter: str | None) -> str:
    """Bare numbers, wrong for a third of the questions; adapters fix a question in two."""
    q = request.messages[-1].content
    gold = GOLD.get(q, "0")
    if _h(q + (adapter or "")) % 3 == 0:
        return str(int(gold) + 2)
    return gold


def scripted(respond=answers_in_sentences_until_told, *, delay: float = 0.0) -> ScriptedModel:  # type: ignore[no-untyped-def]
    name = respond.__name__
    if delay:
        inner = respond

        def respond(r: Request, a: str | None) -> str:  # type: ignore[no-redef]
            time.sleep(delay)
            return inner(r, a)

    return ScriptedModel(respond, name=name)


def format_then_content_errors(request: Request, adapter: str | None) -> str:
    """Sentences until told the format; then bare numbers, wrong for a third of the questions;
    with any adapter, every answer wrong (training makes this model worse)."""
    q = request.messages[-1].content
    gold = GOLD.get(q, "0")
    if adapter is not None:
        return str(int(gold) + 1)
    told = any("number only" in m.content for m in request.messages if m.role == "system")
    if not told:
        return f"The answer is {gold}."
    return str(int(gold) + 3) if _h(q) % 3 == 0 else gold
