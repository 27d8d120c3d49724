"""Tests that need something a plain machine may lack (Chromium, PostgreSQL, the packaged
SmolLM2): they skip with the reason printed, except where `make test` requires the thing, which
sets ORPO_REQUIRE_<NAME>=1 after installing it; there a missing one is a failure."""

import os

import pytest


def require(name: str, missing_reason: str | None) -> None:
    """Carry on when `missing_reason` is None; else fail under ORPO_REQUIRE_<name>, or skip
    with the reason printed (never silently)."""
    if missing_reason is None:
        return
    flag = f"ORPO_REQUIRE_{name}"
    if os.environ.get(flag):
        pytest.fail(f"{flag} is set but {missing_reason}")
    print(f"skipping: {missing_reason}")
    pytest.skip(missing_reason)
