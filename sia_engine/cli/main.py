"""The ``sia`` command: a thin face over the library (one library call per command).

Every command takes ``--store PATH`` (default ``./.sia``, or ``$SIA_STORE``) and ``--json``.
Library errors become a one-line message on stderr and exit status 2; ``sia verify`` exits 1
when the store does not verify.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import click
import msgspec
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from sia_engine import __version__
from sia_engine.cli.api import (
    emit_json,
    envelope_dict,
    err,
    fail,
    open_store,
    out,
    printable,
    store_options,
    styled,
)
from store import Envelope, RunsSql, Store


class _Sia(click.Group):
    """The command group: every typed error (the engine's ``SiaError``, the store's
    ``StoreError``) that reaches it is printed as one ``error:`` line with exit code 2, never as
    a traceback (a damaged store says it is damaged and what to do)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        bad = next((a for a in args if "\x00" in a), None)
        if bad is not None:  # no file name, branch or query may hold one (click's path check would crash on it)
            raise click.UsageError(f"argument {bad!r} holds a NUL byte", ctx)
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        from sia_engine.errors import SiaError
        from store import StoreError

        try:
            return super().invoke(ctx)
        except (SiaError, StoreError) as e:
            err.print(styled(("error:", "bold red"), f" {printable(str(e))}"), soft_wrap=True)
            sys.exit(2)


@click.group(cls=_Sia, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sia")
def main() -> None:
    """sia-engine: self-improving agents on an append-only, hash-chained event log.

    \b
    Example:
      sia demo --store ./.sia && sia verify --store ./.sia
    """


@main.command()
@store_options
@click.option("--branch", default="main", show_default=True, help="Name of the first branch.")
def init(store_path: str, as_json: bool, branch: str) -> None:
    """Create a store (a folder with log.duckdb and blobs/) and its first branch.

    \b
    Example:
      sia init --store ./runs/exp1
    """
    with Store.create(store_path) as s:
        if branch not in {b.name for b in s.log.branches()}:
            s.log.init_branch(branch)
        names = [b.name for b in s.log.branches()]
        info = {"store": str(s.root.resolve()), "branches": names, "events": s.log.count()}
    if as_json:
        emit_json(info)
    else:
        out.print(styled("store ready at ", (str(info["store"]), "bold"), f" (branches: {', '.join(names)})"))


@main.command()
@store_options
@click.option("--branch", default="main", show_default=True, help="Branch whose history to show.")
@click.option("--kind", "kinds", multiple=True, help="Only these event kinds (repeatable).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=0), help="Show the last N events (0: all).")
def log(store_path: str, as_json: bool, branch: str, kinds: tuple[str, ...], limit: int) -> None:
    """Show a branch's history, fork ancestry included.

    \b
    Example:
      sia log --branch main --kind version_accepted --kind version_rejected
    """
    with open_store(store_path, read_only=True) as s:
        head = s.log.branch(branch).head_seq
        if limit == 0 and as_json:  # the whole history: streamed, one event at a time, never all in memory
            _stream_json(s.log.iter_read(branch, kinds=list(kinds) or None))
            return
        if limit > 0 and not kinds and head + 1 >= limit:  # the branch's own last events: no full read
            events = s.log.read(branch, after_seq=head - limit)
        else:
            events = s.log.read(branch, kinds=list(kinds) or None)
    if limit > 0:
        events = events[-limit:]
    if as_json:
        emit_json([envelope_dict(e) for e in events])
        return
    t = Table(title=f"history of {branch}")
    for col in ("ref", "id", "kind", "recorded", "summary"):
        t.add_column(col, overflow="fold")
    for e in events:
        p = msgspec.json.decode(e.payload)
        summary = ", ".join(f"{k}={str(v)[:24]}" for k, v in p.items() if k != "kind" and not isinstance(v, (dict, list)))
        t.add_row(e.ref, e.id[:12], e.kind, e.recorded_at.strftime("%Y-%m-%d %H:%M:%S"), summary[:80])
    out.print(t)


def _stream_json(events: Iterator[Envelope]) -> None:
    """A JSON array written as it is read: the same document ``emit_json`` prints for a large
    list, in memory one event at a time (1M events took more than this machine's 24 GiB whole)."""
    enc = msgspec.json.Encoder()
    w = sys.stdout.write
    first = True
    for e in events:
        w("[" if first else ",")
        w(enc.encode(envelope_dict(e)).decode())
        first = False
    w("[]\n" if first else "]\n")
    sys.stdout.flush()


@main.command()
@store_options
def branches(store_path: str, as_json: bool) -> None:
    """List branches with their fork points and heads.

    \b
    Example:
      sia branches --json
    """
    with open_store(store_path, read_only=True) as s:
        infos = s.log.branches()
    if as_json:
        emit_json([msgspec.to_builtins(b) for b in infos])
        return
    t = Table(title="branches")
    for col in ("name", "forked from", "own events", "head"):
        t.add_column(col)
    for b in infos:
        base = f"{b.base_branch}#{b.base_seq}" if b.base_branch else "-"
        t.add_row(b.name, base, str(b.head_seq + 1), (b.head_id or "-")[:12])
    out.print(t)


@main.command()
@store_options
@click.option("--checkpoint", "checkpoint", default=None, type=click.Path(dir_okay=False), help="Also prove the log extends this signed checkpoint (sia checkpoint).")
@click.option("--public-key", "public_key", default=None, type=click.Path(dir_okay=False), help="The .pub key that must have signed --checkpoint.")
def verify(store_path: str, as_json: bool, checkpoint: str | None, public_key: str | None) -> None:
    """Check the hash chain, every event, every blob and every snapshot; exit 1 on failure.

    With --checkpoint and --public-key, also prove that the log still extends a signed
    checkpoint: that catches a history rewritten with every hash recomputed.

    \b
    Example:
      sia verify --store ./runs/exp1 || echo "tampered"
      sia verify --checkpoint cp.json --public-key audit.key.pub
    """
    from sia_engine.domain.integrity import Problem, verify_store
    from store.checkpoint import check_checkpoint

    if (checkpoint is None) != (public_key is None):
        fail("--checkpoint and --public-key go together: the checkpoint is only as good as the key that must have signed it")
    with open_store(store_path, read_only=True) as s:
        report = verify_store(s.log, s.blobs)
        if checkpoint is not None and public_key is not None:
            extra = tuple(Problem("checkpoint", None, "", p) for p in check_checkpoint(s.log, checkpoint, public_key))
            report = msgspec.structs.replace(report, problems=report.problems + extra)
        journal = s.journal_events
    if as_json:
        emit_json({**msgspec.to_builtins(report), "ok": report.ok, "journal_events": journal, "checkpoint": checkpoint})
        if not report.ok:
            sys.exit(1)
        return
    if journal:
        out.print(styled(("note", "yellow"), f": {journal} events are in the journal, not yet in log.duckdb (a writer stopped without "
                  "closing the store); they were verified from a private copy and the store was left as it is. The next "
                  "read-write open (sia run, sia fork, ...) moves them in."))
    if report.ok:
        out.print(
            styled(("OK", "green"), f": {report.n_events} events on {report.n_branches} branches, "
                   f"{report.n_blobs} blobs, {report.n_snapshots} snapshots verified"
                   + (f"; the log extends the signed checkpoint {checkpoint}" if checkpoint else "")), soft_wrap=True,
        )
    else:
        out.print(styled(("FAILED", "bold red"), f": {len(report.problems)} problem(s); first: {report.first}"), soft_wrap=True)
        for p in report.problems[1:20]:
            out.print(f"  {p}", highlight=False, soft_wrap=True)
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Private key file to write (its public key goes to OUT.pub).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def keygen(out_path: str, as_json: bool) -> None:
    """Make an Ed25519 key pair for signing checkpoints (never overwrites a file).

    Keep the private key away from the store: whoever can write the store must not hold it.

    \b
    Example:
      sia keygen --out ~/keys/audit.key
    """
    from store.checkpoint import generate_key

    priv, pub = generate_key(out_path)
    if as_json:
        emit_json({"private_key": str(priv), "public_key": str(pub)})
        return
    out.print(f"wrote {priv} (private, mode 600) and {pub} (public)", highlight=False)


@main.command()
@store_options
@click.option("--sign", "key_path", required=True, type=click.Path(dir_okay=False), help="Private key (sia keygen).")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write (never overwritten).")
def checkpoint(store_path: str, as_json: bool, key_path: str, out_path: str) -> None:
    """Sign the store's branch heads and event count: a head anchored outside the database.

    \b
    Example:
      sia checkpoint --sign ~/keys/audit.key --out ./checkpoints/2026-11-26.json
      sia verify --checkpoint ./checkpoints/2026-11-26.json --public-key ~/keys/audit.key.pub
    """
    from sia_engine.domain.integrity import verify_store
    from store.checkpoint import sign_checkpoint

    with open_store(store_path, read_only=True) as s:
        report = verify_store(s.log, s.blobs)
        if not report.ok:  # never sign a damaged history
            fail(f"the store does not verify ({report.first}); nothing was signed")
        doc = sign_checkpoint(s.log, key_path, out_path, store=str(s.root.resolve()))
    st = doc["statement"]
    if as_json:
        emit_json(doc)
        return
    out.print(f"signed {st['events']} events on {len(st['branches'])} branches into {out_path}", highlight=False)


@main.command()
@store_options
@click.option("--clear", is_flag=True, help="drop the cache (rows and files); rebuilds then reduce from the events")
def snapshots(store_path: str, as_json: bool, clear: bool) -> None:
    """Count the cached states (full and delta snapshots), or drop them with --clear.

    Snapshots are a cache derived from the events, never a source of truth: dropping them loses
    nothing, and the next run writes new ones. Use it when `sia verify` reports a damaged snapshot.

    \b
    Example:
      sia snapshots --store ./runs/exp1 --clear
    """
    from sia_engine.domain.history import DELTA_KEY, SNAPSHOT_KEY

    with open_store(store_path, read_only=not clear) as s:
        counts = {"full": len(s.log.list_snapshots(SNAPSHOT_KEY)), "delta": len(s.log.list_snapshots(DELTA_KEY))}
        dropped = s.log.clear_snapshots() if clear else 0
    if as_json:
        emit_json({**counts, "dropped": dropped})
        return
    out.print(f"{counts['full']} full and {counts['delta']} delta snapshots" + (f"; dropped {dropped}" if clear else ""), highlight=False)


@main.command()
@store_options
@click.argument("query")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(min=1), help="At most this many rows.")
@click.option("--max-bytes", default=1_000_000, show_default=True, type=click.IntRange(min=1), help="At most about this many bytes of values (longer text is cut, and said).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Stop the query after this many seconds.")
@click.option("--memory-mb", default=1024, show_default=True, type=click.IntRange(min=64), help="Stop the query past this much memory (and as much spilled to disk).")
def sql(store_path: str, as_json: bool, query: str, limit: int, max_bytes: int, timeout_s: float, memory_mb: int) -> None:
    """Run one read-only SELECT over the log (tables: events, branches, snapshots).

    DuckDB's access to files and the network is off for the query (read_text, read_csv, httpfs
    ... are refused), and what it takes and gives back is bounded (--limit rows, --max-bytes,
    --timeout, --memory-mb).

    \b
    Example:
      sia sql "SELECT kind, count(*) AS n FROM events GROUP BY kind ORDER BY n DESC"
      sia sql "SELECT payload->>'score' AS score FROM events WHERE kind = 'version_evaluated'"
    """
    with open_store(store_path, read_only=True) as s:
        if not isinstance(s.log, RunsSql):  # a store's log is always DuckDB's, which does
            fail(f"this store's log ({type(s.log).__name__}) does not answer SQL")
        cols, rows, truncated = s.log.sql(query, max_rows=limit, max_bytes=max_bytes, timeout_s=timeout_s, memory_mb=memory_mb)
    if as_json:
        emit_json([dict(zip(cols, (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v for v in r))) for r in rows])
    else:
        t = Table()
        for c in cols:
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(*("NULL" if v is None else str(v) for v in r))
        out.print(t)
    if truncated:  # on stderr, so that --json stays one document
        err.print(styled(("note", "yellow"), f": {truncated}"))


@main.command()
@store_options
@click.option("--iterations", default=4, show_default=True, help="Improvement iterations to record.")
@click.option("--seed", default=0, show_default=True, help="Seed of the synthetic outputs and scores.")
def demo(store_path: str, as_json: bool, iterations: int, seed: int) -> None:
    """Record a synthetic sample history (no model), verify it and show it.

    Outputs and scores are seeded random numbers, labelled synthetic in the log; every event
    goes through the real recording path, so the history verifies, forks and rolls back.

    \b
    Example:
      sia demo --store /tmp/demo-store --iterations 6
    """
    from sia_engine.domain.integrity import verify_store
    from sia_engine.loop.demo import record_sample_history

    with Store.create(store_path) as s:
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err, disable=as_json) as bar:
            task = bar.add_task("recording", total=None)
            hist = record_sample_history(s, iterations=iterations, seed=seed, engine_version=__version__, on_step=lambda m: bar.update(task, description=m))
        report = verify_store(s.log, s.blobs)
        versions = hist.state.ordered_versions()
        summary = {
            "store": str(s.root.resolve()),
            "events": s.log.count(),
            "branches": [b.name for b in s.log.branches()],
            "head": hist.state.head,
            "verified": report.ok,
            "versions": [
                {"version": v.version_id, "lever": v.lever, "score": v.score(), "status": v.status} for v in versions
            ],
        }
    if as_json:
        emit_json(summary)
    else:
        t = Table(title="versions on main (synthetic scores)")
        for col in ("#", "version", "lever", "val score", "status"):
            t.add_column(col)
        for v in versions:
            sc = v.score()
            t.add_row(str(v.index), v.version_id[:12], v.lever, "-" if sc is None else f"{sc:.3f}", v.status)
        out.print(t)
        verdict = ("verified", "green") if report.ok else (f"NOT verified: {report.first}", "red")
        out.print(styled(f"{summary['events']} events on {len(list(summary['branches']))} branches, ", verdict,  # type: ignore[call-overload]
                         f". Next: sia log --store {store_path} / sia branches / sia sql"))
    if not report.ok:
        sys.exit(1)


from sia_engine.cli.experiment import experiment  # noqa: E402
from sia_engine.cli.run import run, tasks  # noqa: E402 - the loop's commands live there

for _cmd in (run, tasks, experiment):
    main.add_command(_cmd)
CORE = dict(main.commands)


def build_cli() -> click.Group:
    """The core commands plus every command a package registers under the ``sia_engine.commands``
    entry points (replay's and the tasks' own come that way): the engine imports none of them."""
    from importlib.metadata import entry_points

    main.commands = dict(CORE)
    for ep in sorted(entry_points(group="sia_engine.commands"), key=lambda e: e.name):
        main.add_command(ep.load(), ep.name)
    return main


build_cli()


if __name__ == "__main__":
    main()
