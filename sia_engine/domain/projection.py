"""Reading the log: projections, as pyeventsourcing and Marten have them.

A projection is an initial value and ``apply(value, record) -> value``: a read model of a branch
(an audit section, an experiment table, the rows of ``sia compare``, a version's provenance, the
recipe each adapter was trained with). ``fold`` feeds several projections from ONE pass over the
records, so a report reads and decodes each branch once, however many things it computes.

Each projection names the event ``kinds`` it reads; ``readers(kind)`` lists every projection
that reads a kind, so the readers of an event are found from its definition
(``readers("adapter_checkpointed")``), not by a grep. A record is a decoded event with where and
when it was recorded (``Recorded``): from an envelope of the log, or from a row of a Parquet
export (``Recorded.from_row``), so a table computed from either is the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import msgspec

from sia_engine.domain.events import AdapterCheckpointed, Event, decode, decode_envelope
from sia_engine.domain.state import AgentState, apply
from store import BranchInfo, Envelope, EventLog

__all__ = ["Recorded", "Projection", "records", "histories", "fold", "project", "readers", "PROJECTIONS", "StateProjection", "KindCounts", "RecipeByVersion",
           "AdaptersTrained"]

T = TypeVar("T")


class Recorded(msgspec.Struct, frozen=True):
    """A decoded event, with the branch and seq it was recorded at, when, and its id (``""``
    where the source does not say: a Parquet row read without its ``id`` column)."""

    branch: str
    seq: int
    recorded_at: datetime
    event: Event
    event_id: str = ""

    @property
    def where(self) -> str:
        return f"{self.branch}#{self.seq}"

    @property
    def kind(self) -> str:
        return self.event.kind()

    @classmethod
    def from_envelope(cls, env: Envelope) -> Recorded:
        return cls(env.branch, env.seq, env.recorded_at, decode_envelope(env), env.id)

    @classmethod
    def from_row(cls, branch: str, seq: int, kind: str, schema: int, payload: str | bytes, recorded_at: datetime,
                 event_id: str = "") -> Recorded:
        """A row of ``events.parquet`` (``sia export``), decoded as the log's own envelope would be."""
        data = payload.encode() if isinstance(payload, str) else payload
        return cls(branch, seq, recorded_at, decode(kind, schema, data, where=f"{branch}#{seq}"), event_id)


PROJECTIONS: dict[str, type[Projection[Any]]] = {}


class Projection(ABC, Generic[T]):
    """A read model of a branch: ``initial()`` and ``apply(value, record)``. ``kinds``: the event
    kinds it reads (others are not passed to it; None: every kind). Subclasses register
    themselves in ``PROJECTIONS`` under their qualified name."""

    kinds: ClassVar[frozenset[str] | None] = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        PROJECTIONS[f"{cls.__module__}.{cls.__qualname__}"] = cls

    @abstractmethod
    def initial(self) -> T: ...

    @abstractmethod
    def apply(self, value: T, r: Recorded) -> T: ...

    def wants(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


def records(log: EventLog, branch: str, *, own: bool = False, until_seq: int | None = None,
            kinds: Sequence[str] | None = None) -> Iterator[Recorded]:
    """``branch``'s events decoded once, ancestry first (``own``: only the branch's own events;
    ``kinds``: only events of those kinds)."""
    envs = log.read(branch, after_seq=-1, kinds=kinds) if own else log.read(branch, until_seq=until_seq, kinds=kinds)
    for env in envs:
        yield Recorded.from_envelope(env)


class _Placed(Protocol):
    @property
    def branch(self) -> str: ...

    @property
    def seq(self) -> int: ...


P = TypeVar("P", bound=_Placed)


def histories(branches: Sequence[BranchInfo], own: Mapping[str, Sequence[P]]) -> dict[str, list[P]]:
    """Each branch's whole history (its ancestry up to the fork point, then its own events) from
    each branch's own events (records or envelopes), as ``log.read(branch)`` would give it,
    without reading a branch twice. ``branches`` lists a fork after the branch it forks."""
    out: dict[str, list[P]] = {}
    for b in branches:
        before: list[P] = []
        if b.base_branch is not None:
            parent = out.get(b.base_branch, [])
            cut = next((i + 1 for i, r in enumerate(parent) if r.branch == b.base_branch and r.seq == b.base_seq), len(parent))
            before = parent[:cut]
        out[b.name] = [*before, *own.get(b.name, ())]
    return out


def project(log: EventLog, branch: str, *projections: Projection[Any], own: bool = False) -> list[Any]:
    """``fold`` over ``branch`` read once, asking the log only for the kinds the projections read."""
    wanted = [p.kinds for p in projections]
    kinds = None if any(k is None for k in wanted) else sorted(set().union(*(k for k in wanted if k is not None)))
    return fold(projections, records(log, branch, own=own, kinds=kinds))


def fold(projections: Sequence[Projection[Any]], recs: Iterable[Recorded]) -> list[Any]:
    """Every projection's value after one pass over ``recs``."""
    values = [p.initial() for p in projections]
    for r in recs:
        kind = r.kind
        for i, p in enumerate(projections):
            if p.wants(kind):
                values[i] = p.apply(values[i], r)
    return values


def readers(kind: str) -> list[str]:
    """The projections (by qualified name) that read events of ``kind``, every-kind readers left out."""
    return sorted(name for name, cls in PROJECTIONS.items() if cls.kinds is not None and kind in cls.kinds)


class StateProjection(Projection[AgentState]):
    """The agent's state: the reducer itself, as a projection (``sia_engine.domain.state.apply``)."""

    def initial(self) -> AgentState:
        return AgentState()

    def apply(self, value: AgentState, r: Recorded) -> AgentState:
        return apply(value, r.event)


class KindCounts(Projection["Counter[str]"]):
    """How many events of each kind."""

    def initial(self) -> Counter[str]:
        return Counter()

    def apply(self, value: Counter[str], r: Recorded) -> Counter[str]:
        value[r.kind] += 1
        return value


class RecipeByVersion(Projection[dict[str, str]]):
    """Version id -> the recipe that trained its adapter (older logs without one: rft)."""

    kinds = frozenset({"adapter_checkpointed"})

    def initial(self) -> dict[str, str]:
        return {}

    def apply(self, value: dict[str, str], r: Recorded) -> dict[str, str]:
        e = r.event
        assert isinstance(e, AdapterCheckpointed)
        value[e.version_id] = e.recipe or "rft"
        return value


class AdaptersTrained(Projection[list[tuple[str, AdapterCheckpointed]]]):
    """Every adapter update, in log order, with its event's id: the provenance ``sia rebuild``
    writes, the devices the loop says its adapters came from."""

    kinds = frozenset({"adapter_checkpointed"})

    def initial(self) -> list[tuple[str, AdapterCheckpointed]]:
        return []

    def apply(self, value: list[tuple[str, AdapterCheckpointed]], r: Recorded) -> list[tuple[str, AdapterCheckpointed]]:
        assert isinstance(r.event, AdapterCheckpointed)
        value.append((r.event_id, r.event))
        return value
