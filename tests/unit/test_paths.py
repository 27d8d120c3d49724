"""Where the project keeps its state: a home that does not exist yet is created whole."""

from __future__ import annotations

import pytest

from orpo.paths import prefect_home

pytestmark = pytest.mark.unit


def test_prefect_home_under_a_new_project_home_is_created_with_its_parents(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.setenv("ORPO_HOME", str(tmp_path / "new" / "home"))
    assert prefect_home() == tmp_path / "new" / "home" / ".prefect"
    assert (tmp_path / "new" / "home" / ".prefect").is_dir()
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "own" / "prefect"))  # a user's choice wins
    assert prefect_home() == tmp_path / "own" / "prefect"
    assert (tmp_path / "own" / "prefect").is_dir()
