"""Export a store to Parquet for analysis elsewhere: ``events.parquet`` (every branch's own events:
the envelope and its payload as JSON text), ``versions.parquet`` (every branch's agent versions
with their validation scores) and ``trajectories.parquet`` (every recorded output with its score,
failure class and sample index). Each file is written whole (temp file, fsync, rename); the
store is only read."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from replay.errors import check_out_folder
from replay.rebuild import state_at
from store import Store
from store.files import atomic_write

__all__ = ["export_parquet"]


def _write(table: pa.Table, path: Path) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write(path, buf.getvalue())


def export_parquet(store: Store, out: str | Path) -> dict[str, int]:
    """Write the three tables into ``out`` (a new or empty folder outside the store: ``OutputRefused``
    otherwise); returns their row counts."""
    import msgspec

    folder = check_out_folder(out, store.root)
    events: dict[str, list[Any]] = {k: [] for k in ("id", "parent", "branch", "seq", "kind", "schema", "recorded_at", "payload")}
    trajs: dict[str, list[Any]] = {k: [] for k in ("branch", "seq", "trajectory_id", "episode_id", "split", "version_id", "sample",
                                                   "output", "score", "failure")}
    versions: dict[str, list[Any]] = {k: [] for k in ("branch", "version_id", "index", "parent", "lever", "adapter", "status", "val_score")}
    for info in store.log.branches():
        own = store.log.read(info.name, after_seq=-1)  # the branch's own events, no ancestry
        for e in own:
            for k, cell in (("id", e.id), ("parent", e.parent), ("branch", e.branch), ("seq", e.seq), ("kind", e.kind),
                            ("schema", e.schema), ("recorded_at", e.recorded_at), ("payload", e.payload.decode())):
                events[k].append(cell)
            if e.kind == "trajectory_recorded":
                p = msgspec.json.decode(e.payload)
                trajs["branch"].append(e.branch)
                trajs["seq"].append(e.seq)
                for k in ("trajectory_id", "episode_id", "split", "version_id", "output", "score"):
                    trajs[k].append(p.get(k))
                trajs["sample"].append(p.get("sample", 0))
                trajs["failure"].append(p.get("failure", ""))
        state = state_at(store.log, info.name)
        for v in state.ordered_versions():
            for k, val in (("branch", info.name), ("version_id", v.version_id), ("index", v.index), ("parent", v.parent),
                           ("lever", v.lever), ("adapter", v.adapter), ("status", v.status), ("val_score", v.score("val"))):
                versions[k].append(val)
    tables = {"events": pa.table(events), "trajectories": pa.table(trajs), "versions": pa.table(versions)}
    for name, table in tables.items():
        _write(table, folder / f"{name}.parquet")
    return {name: t.num_rows for name, t in tables.items()}
