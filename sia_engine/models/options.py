"""Answers from a closed set (``Request.options``): the model answers with one of the options, by
its own likelihood, so every output is a valid answer (lawbench-charge's charges).

Each option's score is the sum of the log-probabilities of ``prefix + option + end`` as the
answer (``ScoresOptions.score_options``, the option scoring the model Feedback Agent uses), where
``end`` is the decoding's first stop string: so an option that is the start of another (盗窃 and
盗窃、侮辱尸体) does not always outscore it (``scored_texts``).
Greedy decoding (temperature 0) takes the most likely option (the first of equals); sampling
draws from the options' probabilities at the decoding's temperature (softmax of score /
temperature), sample ``j`` from a generator seeded ``seed + j``, so a request's samples differ and
a replay draws the same. The output's ``raw`` records every option's score.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

from sia_engine.models.protocol import Generation, Request

__all__ = ["pick", "with_options", "scored_texts"]


def scored_texts(r: Request) -> list[str]:
    """What is scored for each of ``r``'s options: the answer whole, up to its end."""
    end = r.decoding.stop[0] if r.decoding.stop else ""
    return [r.prefix + o + end for o in r.options]


def pick(scores: Sequence[float], temperature: float, seed: int) -> int:
    """The option taken: the most likely at temperature 0, else one drawn (see the module's docstring)."""
    top = max(scores)
    if temperature <= 0 or not math.isfinite(top):  # greedy, or no option has a finite score: the most likely, the first of equals
        return max(range(len(scores)), key=lambda i: (scores[i], -i))
    weights = [math.exp((s - top) / temperature) for s in scores]
    x = random.Random(f"option:{seed}").random() * sum(weights)
    for i, w in enumerate(weights):
        x -= w
        if x < 0:
            return i
    return len(scores) - 1


def with_options(requests: Sequence[Request], generate: Callable[[list[Request]], list[Generation]],
                 score: Callable[[Request], list[tuple[float, int]]]) -> list[Generation]:
    """Every request's ``n`` generations in order: those with options answered from them (``score``
    gives each option's (log-probability, tokens)), the rest by ``generate`` in one call."""
    free = [r for r in requests if not r.options]
    made = iter(generate(free) if free else [])
    out: list[Generation] = []
    for r in requests:
        if not r.options:
            out += [next(made) for _ in range(r.n)]
            continue
        scored = score(r)
        logps = [s for s, _ in scored]
        raw = {"option_logprobs": [round(s, 6) for s in logps]}
        for j in range(r.n):
            i = pick(logps, r.decoding.temperature, r.seed + j)
            out.append(Generation(r.options[i], n_tokens=scored[i][1], finish="option", raw=raw))
    return out
