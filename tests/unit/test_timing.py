"""Where the time goes: phase timers, the launcher's start-up clock and the per-phase sums."""

import time

import pytest

from orpo.timing import LAUNCHED_AT_ENV, Phases, breakdown, breakdown_lines, startup_seconds

pytestmark = pytest.mark.unit


def test_phases_add_up_and_unknown_names_are_refused():
    phases = Phases()
    with phases("load_seconds"):
        time.sleep(0.01)
    phases.add("load_seconds", 1.0)
    assert 1.01 <= phases.seconds["load_seconds"] < 1.5
    with pytest.raises(ValueError, match="unknown phase 'loading'"):
        phases("loading")


def test_startup_is_measured_from_the_launch_or_absent(monkeypatch):
    monkeypatch.delenv(LAUNCHED_AT_ENV, raising=False)
    assert startup_seconds(time.time()) is None
    monkeypatch.setenv(LAUNCHED_AT_ENV, repr(100.0))
    assert startup_seconds(112.5) == pytest.approx(12.5)


def test_breakdown_sums_per_phase_in_phase_order():
    rows = [
        {"cell_id": "a", "phase": "train_seconds", "seconds": 3.0},
        {"cell_id": "a", "phase": "startup_seconds", "seconds": 5.0},
        {"cell_id": "b", "phase": "startup_seconds", "seconds": 7.0},
        {"cell_id": "b", "phase": "judge_seconds", "seconds": None},  # not recorded: left out
    ]
    table = breakdown(rows)
    assert [r["phase"] for r in table] == ["startup_seconds", "train_seconds"]
    assert table[0] == {
        "phase": "startup_seconds", "items": 2, "seconds": 12.0, "share": 0.8, "mean_seconds": 6.0
    }  # fmt: skip
    text = breakdown_lines(rows, 30.0, 2.0, 1.5)
    assert text.startswith("time: 30.0 s wall in the flow: 2.0 s set-up")
    assert "cell start-up (launcher, interpreter, imports)" in text and "80.0%" in text
