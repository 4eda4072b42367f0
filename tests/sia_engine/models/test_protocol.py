"""Every model backend honours the ``Model`` protocol, and each optional feature is seen where a
backend has it: statically (this file is in mypy's ``files``: ``as_models``, annotated to return
``Model``s, fails it when a backend drifts from the protocol) and at run time (the protocols are
runtime-checkable; the signatures must match the protocol's exactly, which ``isinstance`` alone
does not check)."""

from __future__ import annotations

import inspect
import typing

from sia_engine.domain.events import ModelRef
from sia_engine.models.hf import HFModel
from sia_engine.models.openai_compat import OpenAIChatModel
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import ChoosesOption, Labelled, Model, ScoresOptions, ScriptedModel, ServesOnDevice
from sia_engine.models.recorded import RecordedModel


def as_models(hf: HFModel, endpoint: OpenAIChatModel, scripted: ScriptedModel, recorded: RecordedModel) -> list[Model]:
    """Checked by mypy: a backend whose attributes or methods drift from the protocol's fails it."""
    return [hf, endpoint, scripted, recorded]


def backends() -> dict[str, Model]:
    return dict(zip(("hf", "endpoint", "scripted", "recorded"),
                    as_models(tiny_model(), OpenAIChatModel("http://127.0.0.1:9", "m"), ScriptedModel(lambda r, a: "x"),
                              RecordedModel(ModelRef(id="m", revision="1", weights_hash=""), ())), strict=True))


def test_every_backend_is_a_model_with_the_protocols_signatures() -> None:
    for name, model in backends().items():
        assert isinstance(model, Model), name
        for method in ("generate", "set_adapter", "train_adapter"):
            want = inspect.signature(getattr(Model, method))
            got = inspect.signature(getattr(type(model), method))
            assert list(got.parameters) == list(want.parameters), (name, method)
            assert [(p.kind, p.default) for p in got.parameters.values()] == [(p.kind, p.default) for p in want.parameters.values()], (name, method)
            hints = typing.get_type_hints(getattr(type(model), method))
            assert hints == typing.get_type_hints(getattr(Model, method)), (name, method)


def test_optional_features_are_seen_where_a_backend_has_them() -> None:
    m = backends()
    assert {k for k, v in m.items() if isinstance(v, ScoresOptions)} == {"hf", "scripted"}
    assert {k for k, v in m.items() if isinstance(v, ChoosesOption)} == {"endpoint"}
    assert {k for k, v in m.items() if isinstance(v, ServesOnDevice)} == {"hf"}
    assert {k for k, v in m.items() if isinstance(v, Labelled)} == {"hf"}
