"""Shared test settings: hypothesis profiles ("ci" is derandomized), shared data location."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# The tests exercise the sandbox itself, wall by wall (each test that needs a wall skips without it,
# with the reason), so the refusal of model-written code in a weaker jail is allowed here, except in
# the test of that refusal (tests/sia_engine/sandbox/test_sandbox_hostile.py)
os.environ.setdefault("SIA_ALLOW_WEAK_SANDBOX", "1")

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


class FakeClock:
    """A clock that ticks one second per call, for reproducible recorded_at values."""

    def __init__(self) -> None:
        self.t = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"needs {p} (the project's shared data folder beside the checkout); absent here")
    return p
