"""``lawbench-charge``: single-label criminal-charge classification on LawBench task 3-3, scored
by strict accuracy (the answer must name the gold charge and no other of the 189).

The closest offline stand-in for SIA's LawBench number. Items are the single-label ones among
items 0-349 of the data folder's 3-3; every charge with at least ``min_items`` of them is kept (4:
16 charges, 80 items; ``top_k`` keeps only the most frequent instead); each charge's items are
split 60/20/20 by the sha256 of their index (stratified: 2/1/1 of 4, 3/1/1 of 5, 4/1/1 of 6).

The model answers from the closed set of kept charges by its own likelihood
(``answer_options``: ``Request.options``), so every output names exactly one valid charge and
strict accuracy measures which. Free generation named no charge in 31 of 32 validation outputs
of SmolLM2-135M (the task measured nothing); the charges are not listed in the prompt (listed in
a fixed order, likelihood scoring copies the first). The facts are cut to ``max_chars`` characters (on CPU, long Chinese facts cost
~0.57 characters per token; cutting them to 120-200 characters did not change a small model's
accuracy in a probe). At this scale results are a machinery check with wide intervals, not a
reproduction of SIA's numbers.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from sia_engine.domain.scaffold import Decoding, Scaffold
from sia_engine.loop.task import Episode, Score, chat_messages
from sia_engine.models.protocol import Message
from tasks.lawbench.data import LawBenchDataError, load_items
from tasks.lawbench.labels import CHARGES

__all__ = ["LawBenchCharge"]


class LawBenchCharge:
    name = "lawbench-charge"
    description = "LawBench 3-3 single-label charge classification, strict accuracy (needs --data LAWBENCH_FOLDER)"
    data_help = "--data LAWBENCH_FOLDER with zero_shot/3-3.json (the LawBench layout)"
    answer_prefix = "罪名:"

    def __init__(self, data: str | Path | None = None, *, min_items: int = 4, top_k: int | None = None, max_chars: int = 200,
                 protect: tuple[str, ...] = ()) -> None:
        if data is None:
            raise LawBenchDataError("--data", "lawbench-charge needs the LawBench data folder (with zero_shot/3-3.json)")
        items = load_items(data, "3-3")
        self.folder = Path(data)
        single = [(i, it) for i, it in enumerate(items[:350]) if it["answer"].startswith("罪名:") and ";" not in it["answer"]]
        counts = Counter(it["answer"][3:] for _, it in single)
        ranked = [c for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_items]
        self.labels = tuple(ranked[:top_k] if top_k is not None else ranked)
        self.format_hint = "Answer with 罪名: followed by exactly one charge."
        self._episodes: list[Episode] = []
        for label in self.labels:
            mine = sorted((i for i, it in single if it["answer"][3:] == label), key=lambda i: hashlib.sha256(str(i).encode()).hexdigest())
            n = len(mine)
            for k, i in enumerate(mine):
                split: Literal["train", "val", "test"] = "train" if k < round(0.6 * n) else "val" if k < round(0.8 * n) else "test"
                it = items[i]
                question = it["question"][:max_chars]
                self._episodes.append(Episode(id=f"3-3-{i}", split=split, input=f"{it['instruction']}\n{question}", gold=label))
        self._episodes.sort(key=lambda e: int(e.id.rsplit("-", 1)[1]))

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        return [e for e in self._episodes if e.split == split]

    def data_files(self) -> dict[str, Path]:
        """The file the items come from (``run_started`` pins its sha256)."""
        return {"zero_shot/3-3.json": self.folder / "zero_shot" / "3-3.json"}

    def scaffold(self) -> Scaffold:
        return Scaffold(
            system_prompt="你是一名法律专家。根据案件事实判断被告人的罪名。",
            output_format=self.format_hint,
            decoding=Decoding(temperature=0.0, max_new_tokens=16, stop=("\n",)),
        )

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        return chat_messages(scaffold, episode.input)

    def _named(self, output: str) -> set[str]:
        found = {c for c in CHARGES if c in output}
        # a charge inside a longer one that was named (诈骗 in 信用卡诈骗) was not named itself
        return {c for c in found if not any(c != d and c in d for d in found)}

    def parse_answer(self, output: str) -> Any | None:
        """The one charge named, or None (none named, or several: strict accuracy counts neither)."""
        found = self._named(output)
        return next(iter(found)) if len(found) == 1 else None

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        """Majority class: accuracy of always naming the most frequent training charge."""
        train = [e.gold for e in self.episodes("train") if e.gold is not None]  # every episode has one
        eps = self.episodes(split)
        if not train or not eps:
            return {}
        top = max(sorted(set(train)), key=train.count)
        return {"majority-class": sum(e.gold == top for e in eps) / len(eps)}

    def answer_options(self, episode: Episode) -> tuple[str, ...]:
        """The kept charges, in a fixed order: the model answers with the most likely (the answer
        prefix ``罪名:`` is the engine's)."""
        return self.labels

    def random_answer(self, rng: random.Random, episode: Episode) -> str:
        """One of the task's charges, drawn uniformly, in the answer format."""
        return f"罪名:{rng.choice(self.labels)}"

    def score(self, episode: Episode, output: str) -> Score:
        found = self._named(output)
        if not found:
            return Score(0.0, "abstain", {"named": 0.0})
        if found == {episode.gold}:
            return Score(1.0, "none", {"named": 1.0})
        return Score(0.0, "format" if episode.gold in found else "content", {"named": float(len(found))})
