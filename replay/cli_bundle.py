"""``sia bundle`` and ``sia pull``: branches moved between stores as one self-verifying file
(``sia_engine.domain.bundle``)."""

from __future__ import annotations

import click
import msgspec

from sia_engine.cli.api import emit_json, open_store, out, require_verified, store_options, styled

__all__ = ["bundle", "pull"]


@click.command()
@store_options
@click.argument("branches", nargs=-1, required=True)
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False), help="The bundle file to write (a new file, outside the store).")
def bundle(store_path: str, as_json: bool, branches: tuple[str, ...], out_path: str) -> None:
    """Write branches (their events from their fork points, and every blob they name) to one
    self-verifying file, for `sia pull` on another machine.

    \b
    Example:
      sia bundle main what-if --out history.sia-bundle
    """
    from sia_engine.domain.bundle_write import write_bundle

    with open_store(store_path, read_only=True) as s:
        info = write_bundle(s, branches, out_path)
    if as_json:
        emit_json(msgspec.to_builtins(info))
        return
    out.print(f"{info.path}: {', '.join(info.branches)}; {info.events} events, {info.blobs} blobs, {info.bytes:,} bytes", highlight=False)


@click.command()
@store_options
@click.argument("path", type=click.Path(dir_okay=False))
def pull(store_path: str, as_json: bool, path: str) -> None:
    """Append a bundle's branches to this store (created if missing), after checking every id,
    parent link, fork point and blob hash. A branch that differs is refused by name; nothing is
    appended then. Pulling twice changes nothing.

    \b
    Example:
      sia pull history.sia-bundle --store ./.sia
    """
    from sia_engine.domain.bundle import pull_bundle
    from store import Store

    with Store.create(store_path) as s:
        require_verified(s, "sia pull")
        report = pull_bundle(s, path)
    if as_json:
        emit_json(msgspec.to_builtins(report))
        return
    said = [f"{k}: {', '.join(v)}" for k, v in (("created", report.created), ("extended", report.extended), ("already here", report.unchanged)) if v]
    what = f"{report.events} events and {report.blobs} blobs appended" if report.events or report.blobs else "nothing to append"
    out.print(styled(("PULLED", "green"), f" {path}: {what}; " + "; ".join(said)), highlight=False)
