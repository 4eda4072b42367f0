"""Shared pieces of the `sia` command: consoles, JSON output, error mapping, store options."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
import msgspec
from rich.console import Console
from rich.text import Text

from sia_engine.errors import SiaError
from sia_engine.loop.task import NeedsResources, Task
from sia_engine.models.protocol import Labelled, Model
from store import Envelope, Store, StoreError

__all__ = ["out", "err", "styled", "require_verified", "weak_sandbox_option", "store_options", "to_json", "envelope_dict", "fail", "open_store", "emit_json", "load_agent_model"]

F = TypeVar("F", bound=Callable[..., Any])
# markup off: user and model text (branch names, SQL cells, model output) is printed as it is, never
# read as rich markup; the engine styles its own words with ``styled``
out = Console(markup=False)
err = Console(stderr=True, markup=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """Text of plain parts and (text, style) parts: styling that no user text can open or close."""
    return Text.assemble(*parts)


def to_json(obj: Any) -> str:
    def enc(o: Any) -> Any:
        if isinstance(o, bytes):
            return msgspec.json.decode(o) if o[:1] in (b"{", b"[") else o.decode("utf-8", "replace")
        raise NotImplementedError

    return msgspec.json.encode(obj, enc_hook=enc).decode()


def emit_json(obj: Any) -> None:
    """``--json`` output: indented and highlighted when small, plain when large (rich's JSON
    pretty-printer takes minutes over a 100,000-event log)."""
    text = to_json(obj)
    if len(text) <= 65_536:
        out.print_json(text)
    else:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


def envelope_dict(e: Envelope) -> dict[str, Any]:
    return {
        "id": e.id, "parent": e.parent, "branch": e.branch, "seq": e.seq, "kind": e.kind,
        "schema": e.schema, "recorded_at": e.recorded_at.isoformat(), "payload": msgspec.json.decode(e.payload),
    }


@contextmanager
def open_store(path: str, *, read_only: bool = False) -> Iterator[Store]:
    with Store.open(path, read_only=read_only) as s:
        yield s


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on (escapes, BEL, carriage returns)
    written as its Python escape (newlines kept): an error message quotes what a user typed."""
    return text if text.isprintable() else "".join(c if c.isprintable() or c == "\n" else ascii(c)[1:-1] for c in text)


def fail(msg: str, code: int = 2) -> NoReturn:
    err.print(styled(("error:", "bold red"), f" {printable(msg)}"), soft_wrap=True)
    sys.exit(code)


def require_verified(s: Store, command: str) -> None:
    """Refuse (exit 2) to append to a store that does not verify: damage is reported, never built
    upon. A full ``verify_store``: the chain, every event, every blob's bytes, every snapshot."""
    from sia_engine.domain.integrity import verify_store

    report = verify_store(s.log, s.blobs)
    if not report.ok:
        fail(f"the store at {s.root} does not verify ({len(report.problems)} problem(s); first: {report.first}), so `{command}` "
             f"appends nothing to it. See every problem with `sia verify --store {s.root}`; restore the store, or the blob "
             "it names, from a backup (the damage is reported, never repaired), or start a new store")


def _allow_weak(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from sia_engine.sandbox.jail import ALLOW_WEAK_ENV

        os.environ[ALLOW_WEAK_ENV] = "1"


def weak_sandbox_option(f: F) -> F:
    """``--allow-weak-sandbox``: run model-written code where a wall of the sandbox (Landlock,
    namespaces, seccomp) is missing, instead of refusing (what was in force is recorded)."""
    return click.option("--allow-weak-sandbox", is_flag=True, expose_value=False, callback=_allow_weak,
                        help="Run model-written code even where a wall of the sandbox (Landlock, namespaces, seccomp) is "
                             "missing; each tool event records what was in force.")(f)


def store_options(f: F) -> F:
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")(f)
    f = click.option(
        "--store", "store_path", default=".sia", envvar="SIA_STORE", show_default=True,
        type=click.Path(file_okay=False), help="Store directory.",
    )(f)

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (StoreError, SiaError) as e:
            fail(str(e))

    return wrapper  # type: ignore[return-value]


WEAK_MODELS = ("tiny", "smollm2")  # presets that cannot write GPU kernels


def load_agent_model(model_spec: str, openai_url: str | None, openai_model: str | None, device: str, task: Task | None = None) -> Model:
    """The model a command runs: an OpenAI-compatible endpoint, or a local model loaded here.
    A task that ``requires`` a "code-model" refuses the small presets before anything loads."""
    if isinstance(task, NeedsResources) and "code-model" in task.requires and not openai_url and model_spec in WEAK_MODELS:
        fail(f"task {task.name!r} needs a model that writes GPU kernels; {model_spec!r} cannot, and its numbers would mean "
              "nothing: give --openai-url URL (a capable OpenAI-compatible endpoint) or --model FOLDER (a capable local model)")
    if openai_url:
        from sia_engine.models.openai_compat import OpenAIChatModel

        return OpenAIChatModel(openai_url, openai_model or "default")
    from sia_engine.models.presets import load_model

    err.print(f"loading model {model_spec} ...", highlight=False)
    try:
        model = load_model(model_spec, device=device)
    except ValueError as e:  # a device that is not here
        fail(str(e))
    if isinstance(model, Labelled) and model.label:
        err.print(styled((f"{model_spec}: {model.label}", "yellow")))
    return model
