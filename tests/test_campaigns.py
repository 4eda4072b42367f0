"""The reliability campaigns in their short mode (long mode by hand: see docs/testing.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.crash_campaign import campaign as crash_campaign
from bench.tamper_campaign import campaign as tamper_campaign


def test_tamper_campaign_short(tmp_path: Path) -> None:
    """40 single-bit flips across log.duckdb, its WAL, the journal, blobs and snapshot files:
    each detected or proven harmless; none silently accepted, no traceback."""
    r = tamper_campaign(40, 3, tmp_path, quiet=True)
    assert r["bad"] == [], r["bad"]
    outcomes = {o for (_, o) in r["counts"]}  # type: ignore[attr-defined]
    assert outcomes <= {"detected", "harmless"} and "detected" in outcomes
    assert set(r["groups"]) == {"log.duckdb", "wal", "journal", "blob", "snapshot"}  # type: ignore[arg-type]


@pytest.mark.timeout(600)
def test_crash_campaign_short(tmp_path: Path) -> None:
    """Two SIGKILLs at random points of a tiny-model run with LoRA training, resumed: the same
    events (ids) and blobs as the run never killed, and the store verifies after every kill."""
    r = crash_campaign(2, 5, tmp_path, quiet=True)
    assert r["kills"] == 2 and r["problems"] == [], r["problems"]
