"""Make training cells fail on purpose, from the tests only: see tests/hooks/sitecustomize.py."""

import json
import os
from pathlib import Path

import pytest

HOOKS = Path(__file__).parent / "hooks"
FAULTS_ENV = "ORPO_TEST_FAULTS"  # read by tests/hooks/sitecustomize.py


def inject(monkeypatch: pytest.MonkeyPatch, faults: dict[str, dict[str, int]]) -> None:
    """`faults`: {cell id: {"nan_at_step": N} or {"kill_after_step": N}}, for every training
    process started while the monkeypatch lasts."""
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", f"{HOOKS}{os.pathsep}{path}" if path else str(HOOKS))
    monkeypatch.setenv(FAULTS_ENV, json.dumps(faults))
