"""``scrna-denoise``: the agent configures a denoiser; the engine runs it in the sandbox on the
molecular cross-validation split and scores it with the OpenProblems v1 metrics.

The agent answers with a JSON configuration of the denoiser family in ``family.py`` (the engine
writes its opening, ``{"n_pcs": ``, so that a small model stays on track); each value is clamped
into its range, the family's source with the configuration becomes the solution (the scaffold's
solution template), and the sandbox runs ``denoise(train)`` on the training counts. Training
episodes are scored on the split with seed 0, validation episodes on the split with seed 1.
"""

from __future__ import annotations

import io
import json
import random
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np

from sia_engine.domain.payloads import ToolCall
from sia_engine.domain.scaffold import Decoding, Scaffold
from sia_engine.loop.task import Episode, Score, chat_messages
from sia_engine.models.protocol import Message
from sia_engine.sandbox.jail import run_python
from tasks.scrna.data import DEFAULT_DATA, data_file, load_counts
from tasks.scrna.family import RANGES, TRANSFORMS
from tasks.scrna.metrics import Split, control_scores, evaluate, mcv_split

__all__ = ["ScrnaDenoise", "parse_config", "solution_code", "initial_scaffold", "episode_input"]

_FAMILY = (Path(__file__).parent / "family.py").read_text()
_JSON = re.compile(r"\{.*?\}", re.S)
GOOD_ENOUGH = 0.9  # below this normalised score a configuration counts as a content error
DEFAULTS: dict[str, Any] = {"n_pcs": 30, "k": 10, "t": 3, "transform": "sqrt", "normalize": True, "rescale": True, "clip": 0.0}
TEMPLATE = '''{family}

CONFIG = {config}


def denoise(train):
    return family_denoise(train, **CONFIG)


if __name__ == "__main__":
    train = np.load("train.npy")
    out = denoise(train)
    np.save("denoised.npy", np.asarray(out, dtype=np.float64))
'''


def parse_config(answer: str) -> dict[str, Any] | None:
    """The configuration in an answer, every value clamped into its range; None if unreadable."""
    text = answer.strip()
    if text and not text.endswith("}"):
        text += "}"
    m = _JSON.search(text)
    if m is None:
        return None
    try:
        raw = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    cfg = dict(DEFAULTS)
    for key, (lo, hi) in RANGES.items():
        if key in raw:
            try:
                v = float(raw[key])
            except (TypeError, ValueError):
                return None
            if not np.isfinite(v):
                return None
            v = min(max(v, lo), hi)
            cfg[key] = int(round(v)) if isinstance(lo, int) else round(v, 4)
    if "transform" in raw:
        cfg["transform"] = raw["transform"] if raw["transform"] in TRANSFORMS else DEFAULTS["transform"]
    for key in ("normalize", "rescale"):
        if key in raw:
            cfg[key] = bool(raw[key])
    return cfg


def solution_code(config: dict[str, Any], template: str = TEMPLATE) -> str:
    return template.format(family=_FAMILY, config=repr(dict(sorted(config.items()))))


def initial_scaffold() -> Scaffold:
    """The scaffold a run starts from: what the family does and its ranges; no configuration."""
    ranges = ", ".join(f"{k} in [{lo}, {hi}]" for k, (lo, hi) in RANGES.items())
    return Scaffold(
        system_prompt=(
            "You tune a denoiser for single-cell RNA counts: library-size normalisation (normalize), a transform "
            f"({' / '.join(TRANSFORMS)}), PCA to n_pcs components, a kNN graph with k neighbours, t diffusion steps, "
            f"reversing the normalisation (rescale), and setting values below clip to zero. Ranges: {ranges}."
        ),
        output_format="Answer with one JSON object with the keys n_pcs, k, t, transform, normalize, rescale, clip.",
        decoding=Decoding(temperature=0.7, max_new_tokens=48, stop=("}",)),
        solution_template=TEMPLATE,
    )


def episode_input(cells: int, genes: int, k: int, n: int) -> str:
    return f"Dataset: {cells} cells x {genes} genes of raw UMI counts. Propose denoiser configuration {k + 1} of {n}."


class ScrnaDenoise:
    name = "scrna-denoise"
    description = "scRNA-seq denoising (OpenProblems v1, molecular cross-validation); an .h5ad of raw counts, default scanpy's pbmc68k_reduced"
    data_help = "--data FILE.h5ad of raw integer counts; default scanpy's bundled pbmc68k_reduced (pip install --no-deps scanpy==1.11.5)"
    # the shape only: placeholders, no configuration (the engine never suggests an answer)
    format_hint = ('Answer with one JSON object of this shape: {"n_pcs": <integer 2-100>, "k": <integer 2-50>, '
                   '"t": <integer 0-8>, "transform": <"sqrt" | "log" | "none">, "normalize": <true | false>, '
                   '"rescale": <true | false>, "clip": <number 0.0-5.0>}')
    answer_prefix = '{"n_pcs": '

    def __init__(self, data: str | Path = DEFAULT_DATA, *, n_train: int = 16, n_val: int = 4, protect: tuple[str, ...] = (),
                 timeout_s: float = 120.0, memory_mb: int = 4096) -> None:
        self.data = str(data)
        self.counts = load_counts(data)
        self.n_train, self.n_val = n_train, n_val
        self.protect = protect
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self._splits: dict[int, tuple[Split, tuple[float, float, float, float], bytes]] = {}
        self._cache: dict[tuple[int, str], Score] = {}
        self._scope = ""

    # Scoring runs each configuration in its own sandboxed process and touches shared state only
    # through dict assignments: callers (recorded replay) may score on several threads at once.
    concurrent_scoring = True

    def _split(self, seed: int) -> tuple[Split, tuple[float, float, float, float], bytes]:
        if seed not in self._splits:
            split = mcv_split(self.counts, seed)
            buf = io.BytesIO()
            np.save(buf, split.train)
            self._splits[seed] = (split, control_scores(split), buf.getvalue())
        return self._splits[seed]

    def episodes(self, split: Literal["train", "val", "test"]) -> list[Episode]:
        n = {"train": self.n_train, "val": self.n_val, "test": self.n_val}[split]
        seed = {"train": 0, "val": 1, "test": 2}[split]
        cells, genes = self.counts.shape
        return [Episode(id=f"{split}-{k}", split=split, meta={"split_seed": seed}, input=episode_input(cells, genes, k, n)) for k in range(n)]

    def data_files(self) -> dict[str, Path]:
        """The counts file, named as given (``run_started`` pins its sha256)."""
        path = data_file(self.data)
        return {self.data if self.data == DEFAULT_DATA else path.name: path}

    def scaffold(self) -> Scaffold:
        return initial_scaffold()

    def messages(self, scaffold: Scaffold, episode: Episode) -> tuple[Message, ...]:
        return chat_messages(scaffold, episode.input)

    def parse_answer(self, output: str) -> Any | None:
        return parse_config(output)

    def reference_baselines(self, split: Literal["train", "val", "test"]) -> dict[str, float]:
        """The reference denoisers (``sia baseline``) scored on the split that ``split``'s
        episodes are scored on: the numbers a configuration must beat."""
        from tasks.scrna.baselines import BASELINES

        seed = {"train": 0, "val": 1, "test": 2}[split]
        sp, controls, _ = self._split(seed)
        return {name: round(evaluate(sp, fn(sp.train, seed=seed), controls).score, 6) for name, fn in sorted(BASELINES.items())}

    def random_answer(self, rng: random.Random, episode: Episode) -> str:
        """A configuration drawn uniformly from the denoiser family's parameter ranges."""
        cfg: dict[str, Any] = {}
        for key, (lo, hi) in RANGES.items():
            cfg[key] = rng.randint(lo, hi) if isinstance(lo, int) and isinstance(hi, int) else round(rng.uniform(lo, hi), 2)
        cfg.update(transform=rng.choice(TRANSFORMS), normalize=rng.random() < 0.5, rescale=rng.random() < 0.5)
        return json.dumps(cfg)

    def cache_scope(self, scope: str) -> None:
        """One cache per scope (``sia_engine.loop.task.ScopesCache``): a new scope starts empty."""
        if scope != self._scope:
            self._scope, self._cache = scope, {}

    def score_key(self, episode: Episode, output: str) -> str | None:
        """Outputs naming the same configuration on the same split score the same (cached)."""
        cfg = parse_config(output)
        return None if cfg is None else f"{int(episode.meta.get('split_seed', 0))}:{json.dumps(cfg, sort_keys=True)}"

    def score(self, episode: Episode, output: str) -> Score:
        cfg = parse_config(output)
        if cfg is None:
            return Score(0.0, "format", {"valid": 0.0})
        seed = int(episode.meta.get("split_seed", 0))
        key = (seed, json.dumps(cfg, sort_keys=True))
        if key in self._cache:  # the same configuration on the same split: the recorded run stands
            hit = self._cache[key]
            tools = tuple(msgspec.structs.replace(c, outputs={**c.outputs, "cached": True}) for c in hit.tools)
            return msgspec.structs.replace(hit, tools=tools)
        split, controls, train_bytes = self._split(seed)
        code = solution_code(cfg)
        out_bytes = 2 * len(train_bytes) + (1 << 20)  # a float64 matrix of the train counts' shape (int64 or smaller), and its header
        res = run_python(code, files={"train.npy": train_bytes}, outputs=["denoised.npy"], timeout_s=self.timeout_s, untrusted=False,
                         memory_mb=self.memory_mb, protect=self.protect, hidden=(str(data_file(self.data)),),
                         max_output_bytes=out_bytes, max_file_bytes=max(out_bytes, 1 << 30),
                         disk_mb=max(2048, (len(train_bytes) + 2 * out_bytes) >> 20))
        call = ToolCall(name="sandbox", inputs={"config": cfg, "split_seed": seed},
                        outputs={"status": res.status, "exit_code": res.exit_code, "stdout": res.stdout[-2000:],
                            "stderr": res.stderr[-2000:], "wall_s": res.wall_s, "blocked": list(res.blocked), "landlock": res.landlock,
                            "isolation": list(res.isolation)})
        if res.status != "ok" or "denoised.npy" not in res.outputs:
            scored = Score(0.0, "content", {"valid": 1.0, "ran": 0.0}, (call,))
        else:
            try:
                s = evaluate(split, np.load(io.BytesIO(res.outputs["denoised.npy"])), controls)
                # an optimisation task: anything short of near-perfect denoising is room to improve
                scored = Score(round(s.score, 6), "content" if s.score < GOOD_ENOUGH else "none",
                               {"valid": 1.0, "ran": 1.0, "mse": s.mse, "poisson": s.poisson,
                                "mse_normalized": s.mse_normalized, "poisson_normalized": s.poisson_normalized}, (call,))
            except ValueError as e:
                call.outputs["error"] = str(e)
                scored = Score(0.0, "content", {"valid": 1.0, "ran": 0.0}, (call,))
        self._cache[key] = scored
        return scored
