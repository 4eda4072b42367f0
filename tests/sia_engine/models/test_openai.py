"""The OpenAI-compatible backend against a fake server on 127.0.0.1, and offline replay."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sia_engine.domain.events import ActionTaken, decode_envelope
from sia_engine.domain.scaffold import Decoding
from sia_engine.domain.state import state_hash
from sia_engine.errors import SiaError
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.openai_compat import (
    ModelUnavailable,
    NoRecordedResponse,
    OpenAIChatModel,
)
from sia_engine.models.protocol import Message, Request
from sia_engine.models.recorded import RecordedModel
from store import Store
from tests.loop_helpers import GOLD, TASK


class FakeChat(BaseHTTPRequestHandler):
    requests: list[dict] = []  # type: ignore[type-arg]

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeChat.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if body["model"] == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model crashed")
            return
        msgs = body["messages"]
        told = any("number only" in m["content"] for m in msgs if m["role"] == "system")
        gold = GOLD.get(msgs[-1]["content"], "0")
        text = gold if told else f"Sure! {gold}."
        resp = {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}], "usage": {"completion_tokens": 3}}
        data = json.dumps(resp).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def server() -> Iterator[str]:
    FakeChat.requests = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeChat)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_requests_carry_the_decoding_and_seed(server: str) -> None:
    m = OpenAIChatModel(server, "fake-1", api_key="k")
    r = Request((Message("user", "What is 2 + 2?"),), Decoding(temperature=0.5, max_new_tokens=9, stop=("\n",)), seed=42)
    [g] = m.generate([r])
    assert g.text == "Sure! 4." and g.n_tokens == 3 and g.finish == "stop"
    sent = FakeChat.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer k"
    assert (sent["temperature"], sent["max_tokens"], sent["seed"], sent["stop"], sent["model"]) == (0.5, 9, 42, ["\n"], "fake-1")
    assert g.raw["request"]["seed"] == 42 and g.raw["response"]["choices"][0]["message"]["content"] == "Sure! 4."


def test_errors_are_typed(server: str) -> None:
    with pytest.raises(ModelUnavailable) as exc:
        OpenAIChatModel(server, "broken").generate([Request((Message("user", "x"),), Decoding(), seed=0)])
    assert str(exc.value) == f"chat endpoint {server} failed: HTTP 500: model crashed; check that the server runs and the model name is right"
    assert exc.value.status == 500  # what `choose` tells a refused structured request (400/422) from a failure by
    with pytest.raises(ModelUnavailable, match="chat endpoint http://127.0.0.1:9/v1 failed"):
        OpenAIChatModel("http://127.0.0.1:9/v1", "x", timeout=2).generate([Request((Message("user", "x"),), Decoding(), seed=0)])
    with pytest.raises(SiaError, match="serves no LoRA adapters"):
        OpenAIChatModel(server, "x").set_adapter(object())  # type: ignore[arg-type]


def test_loop_over_an_endpoint_then_replay_offline(server: str, tmp_path: Path) -> None:
    model = OpenAIChatModel(server, "fake-1")
    config = LoopConfig(task="arith", iterations=2, levers=("scaffold",))
    with Store.create(tmp_path / "live") as s:
        state = Loop(s, task=TASK, model=model, feedback=RulePolicy(), config=config).run()
        assert state.head_version is not None and state.head_version.score("val") == 1.0
        actions = [decode_envelope(e) for e in s.log.read("main", kinds=["action_taken"])]
    assert len(FakeChat.requests) == len(actions) > 0
    assert all(isinstance(a, ActionTaken) and a.outputs["raw"]["request"]["model"] == "fake-1" for a in actions)
    n_live = len(FakeChat.requests)
    # the server is gone: a replay serves every answer from the recorded actions
    replay = RecordedModel(model.ref, [a for a in actions if isinstance(a, ActionTaken)])
    with Store.create(tmp_path / "replay") as s:
        again = Loop(s, task=TASK, model=replay, feedback=RulePolicy(), config=config).run()
    assert len(FakeChat.requests) == n_live
    assert [(v.lever, v.score("val"), v.status) for v in again.ordered_versions()] == [
        (v.lever, v.score("val"), v.status) for v in state.ordered_versions()
    ]
    assert state_hash(again) == state_hash(state)
    with pytest.raises(NoRecordedResponse):
        replay.generate([Request((Message("user", "never asked"),), Decoding(), seed=0)])
