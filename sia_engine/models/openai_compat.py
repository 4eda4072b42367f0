"""An OpenAI-compatible chat endpoint (vLLM, Ollama, hosted APIs): the scaffold lever only.

Every exchange comes back in ``Generation.raw`` (request body and response JSON), which the
loop records in the ``action_taken`` event, so a replay needs no network: ``sia_engine.models.recorded.RecordedModel``
serves the same answers from the log.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import httpx
import msgspec

from sia_engine.domain.canonical import digest
from sia_engine.domain.events import ModelRef
from sia_engine.errors import ModelUnavailable, NoRecordedResponse, SiaError
from sia_engine.models.protocol import (
    Adapter,
    Generation,
    LoraSettings,
    Message,
    Recipe,
    Request,
    TrainedAdapter,
    TrainExample,
)

__all__ = ["OpenAIChatModel", "ModelUnavailable", "NoRecordedResponse", "WeightsUnsupported", "inputs_key"]


class WeightsUnsupported:
    """A model that serves the scaffold lever only: no adapters, no training."""

    ref: ModelRef
    trains_weights = False

    def set_adapter(self, adapter: Adapter | None) -> None:
        if adapter is not None:
            raise SiaError(f"{self.ref.id} serves no LoRA adapters: this model supports the scaffold lever only")

    def train_adapter(
        self,
        examples: Sequence[TrainExample],
        settings: LoraSettings,
        *,
        seed: int,
        parent: Adapter | None = None,
        on_step: Callable[[int, float], None] | None = None,
        recipe: Recipe = "sft",
    ) -> TrainedAdapter:
        raise SiaError(f"{self.ref.id} cannot train weights: run it with --levers scaffold")


def inputs_key(messages: Any, decoding: Any, seed: int) -> str:
    return digest({"messages": messages, "decoding": decoding, "seed": seed})


class OpenAIChatModel(WeightsUnsupported):
    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0, transport: httpx.BaseTransport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.ref = ModelRef(id=f"openai-compatible:{model}", revision=self.base_url, weights_hash="")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def _body(self, r: Request) -> dict[str, Any]:
        if r.prefix:
            raise SiaError("an OpenAI-compatible endpoint cannot continue an answer prefix; leave Request.prefix empty")
        d = r.decoding
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in r.messages],
            "temperature": d.temperature,
            "top_p": d.top_p,
            "max_tokens": d.max_new_tokens,
            "seed": r.seed,
        }
        if d.stop:
            body["stop"] = list(d.stop)
        return body

    def generate(self, requests: Sequence[Request]) -> list[Generation]:
        """One call per sample: sample ``j`` of a request asks with seed ``seed + j``."""
        if any(r.options for r in requests):
            raise SiaError(f"model {self.ref.id!r}: this task answers from a closed set of options, which a local model scores by "
                           f"likelihood; an endpoint cannot: use a local model (smollm2 or a folder)")
        out = []
        for r in (msgspec.structs.replace(q, n=1, seed=q.seed + j) if q.n > 1 else q for q in requests for j in range(q.n)):
            body = self._body(r)
            data, choice, text = self._exchange(body)
            n = int((data.get("usage") or {}).get("completion_tokens") or 0)
            out.append(Generation(text, n_tokens=n, finish=str(choice.get("finish_reason") or "stop"), raw={"request": body, "response": data}))
        return out

    def _exchange(self, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
        """POST one chat completion: (the response, its first choice, the choice's text); any
        failure is ``ModelUnavailable`` naming the endpoint and what went wrong."""
        try:
            resp = self._client.post("/chat/completions", json=body)
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            choice: dict[str, Any] = data["choices"][0]
            text = str(choice["message"]["content"] or "")
        except httpx.HTTPStatusError as e:
            raise ModelUnavailable(self.base_url, f"HTTP {e.response.status_code}: {e.response.text[:200]}", status=e.response.status_code) from e
        except httpx.HTTPError as e:
            raise ModelUnavailable(self.base_url, str(e) or type(e).__name__) from e
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise ModelUnavailable(self.base_url, f"unexpected response shape ({e!r})") from e
        return data, choice, text

    def choose(self, messages: Sequence[Message], options: Sequence[str]) -> tuple[int | None, list[float], dict[str, Any]]:
        """One of ``options``, chosen by the endpoint: (index or None, scores, the exchange).

        First with structured outputs (a JSON schema whose one field may only be an option) and
        log-probabilities asked for; a server that refuses the request (HTTP 400/422) is asked
        again with the options listed in the prompt, and the answer must be one of them. Scores:
        1 for the chosen option, 0 for the others, or the chosen answer's log-probability where
        the server returns it; None and all-equal scores when the answer was no option."""
        listed = "\n".join(f"- {o}" for o in options)
        msgs = [{"role": m.role, "content": m.content} for m in messages]
        msgs[-1] = {**msgs[-1], "content": f"{msgs[-1]['content']}\nOptions:\n{listed}\nAnswer with one option's exact text."}
        schema = {"type": "object", "properties": {"choice": {"type": "string", "enum": list(options)}}, "required": ["choice"],
                  "additionalProperties": False}
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "temperature": 0.0, "max_tokens": 64, "logprobs": True,
                                "response_format": {"type": "json_schema", "json_schema": {"name": "choice", "strict": True, "schema": schema}}}
        structured = True
        try:
            data, choice, text = self._exchange(body)
        except ModelUnavailable as e:
            if e.status not in (400, 422):
                raise
            structured = False
            body = {k: v for k, v in body.items() if k not in ("response_format", "logprobs")}
            data, choice, text = self._exchange(body)
        text = text.strip()
        answer = text
        if structured:
            try:
                answer = str(msgspec.json.decode(text)["choice"])
            except (msgspec.DecodeError, KeyError, TypeError):
                answer = text
        named = answer.strip().strip('"')
        index = options.index(named) if named in options else None
        content = (choice.get("logprobs") or {}).get("content")
        top = float(sum(float(t.get("logprob", 0.0)) for t in content if isinstance(t, dict))) if isinstance(content, list) and content else 1.0
        scores = [0.0] * len(options) if index is None else [top if i == index else top - 1.0 for i in range(len(options))]
        return index, scores, {"request": body, "response": data, "structured": structured, "answer": text}

    def close(self) -> None:
        self._client.close()
