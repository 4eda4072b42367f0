"""Answers from a closed set (``Request.options``): the model answers with one of the options, by
its own likelihood, so every output is a valid answer (lawbench-charge's charges).

Each option's score is the sum of the log-probabilities of ``prefix + option`` as the start of
the answer (``ScoresOptions.score_options``, the option scoring the model Feedback Agent uses).
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

__all__ = ["pick", "with_options"]


def pick(scores: Sequence[float], temperature: float, seed: int) -> int:
    """The option taken: the most likely at temperature 0, else one drawn (see the module's docstring)."""
    if temperature <= 0:
        return max(range(len(scores)), key=lambda i: (scores[i], -i))
    top = max(scores)
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
