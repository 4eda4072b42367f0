"""``arith``: a small built-in task for the improvement loop until the task suites land.

Questions ask for the sum of two numbers from 0 to 9 ("What is 3 + 4?"); the answer is the
number alone. An empty or evasive output is an abstention, anything but a bare number a format
failure (a right number in a sentence scores 0.5), a wrong bare number a content error. 100 questions, split deterministically by id:
60 train, 20 val, 20 test.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any, Literal

from sia_engine.domain.scaffold import Decoding, Scaffold
from sia_engine.loop.task import Episode, Score, chat_messages
from sia_engine.models.protocol import Message

__all__ = ["Arith"]

_NUMBER = re.compile(r"-?\d+")
_ABSTAIN = ("i don't know", "i cannot", "i can't", "unknown", "sorry")


def _splits(ids: list[str]) -> dict[str, Literal["train", "val", "test"]]:
    """60/20/20 by the order of the ids' sha256: deterministic, and unrelated to the numbers."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).hexdigest())
    return {i: "train" if k < 60 else "val" if k < 80 else "test" for k, i in enumerate(ranked)}


class Arith:
    name = "arith"
    description = "sum of two digits, answer is the number alone (built-in, 100 items)"
    data_help = "built in"
    format_hint = "Answer with the number only: its digits, no words, no punctuation."
    answer_prefix = ""

    def __init__(self) -> None:
        pairs = [(a, b) for a in range(10) for b in range(10)]
        split = _splits([f"arith-{a}-{b}" for a, b in pairs])
        self._episodes = [
            Episode(id=f"arith-{a}-{b}", split=split[f"arith-{a}-{b}"], input=f"What is {a} + {b}?", gold=str(a + b))
            for a, b in pairs
        ]

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        return [e for e in self._episodes if e.split == split]

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        return chat_messages(scaffold, episode.input)

    def random_answer(self, rng: random.Random, episode: Episode) -> str:
        """An answer drawn uniformly from the answer space (a sum of two digits: 0..18)."""
        return str(rng.randint(0, 18))

    def score(self, episode: Episode, output: str) -> Score:
        text = output.strip()
        if not text or any(a in text.lower() for a in _ABSTAIN):
            return Score(0.0, "abstain", {"well_formed": 0.0})
        found = _NUMBER.findall(text)
        if not found:
            return Score(0.0, "format", {"well_formed": 0.0})
        well_formed = float(text == found[0])
        if found[0] == episode.gold:
            return Score(1.0 if well_formed else 0.5, "none" if well_formed else "format", {"well_formed": well_formed})
        return Score(0.0, "content" if well_formed else "format", {"well_formed": well_formed})

    def parse_answer(self, output: str) -> Any | None:
        """A bare integer (the only well-formed answer), or None."""
        text = output.strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else None

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        return {}

    def scaffold(self) -> Scaffold:
        return Scaffold(
            system_prompt="You are a careful assistant who does arithmetic.",
            decoding=Decoding(temperature=0.0, max_new_tokens=8, stop=("\n",)),
        )
