"""`orpo bench --paired` for real: the engines of one (model, method) train at the same time in
processes of their own (the ZeRO-3 worker, the plain-torch floor and TRL's trainer) and every
one of them takes its steps in turn."""

from __future__ import annotations

import json

import pytest

import orpo.bench
from orpo.bench import run_benchmark
from orpo.bench_trl import trl_version

pytestmark = pytest.mark.integration


def test_paired_engines_take_turns_and_report_as_usual(tmp_path, monkeypatch, capsys):
    engines = [("zero3", 1), ("torch", 1)]
    with_trl = trl_version() is not None  # TRL's trainers take turns too, where installed
    ready: list[list[str]] = []
    mark_done = orpo.bench.mark_done

    def spying_mark_done(folder, index):
        # the bench marks a participant done once its cell returned: by then every process
        # of the group that stepped has said it was ready for its turns
        ready.append(sorted(p.name for p in folder.glob("ready-*")))
        mark_done(folder, index)

    monkeypatch.setattr(orpo.bench, "mark_done", spying_mark_done)
    table = run_benchmark(
        tmp_path,
        steps=3,
        models=["opt-tiny"],
        methods=["sft", "orpo"],
        engines=engines,
        against_trl=with_trl,
        paired=True,
    )
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    groups = {"sft": ["zero3", "torch"], "orpo": ["zero3", "torch"] + (["trl"] * with_trl)}
    assert sorted((r["method"], r["engine"]) for r in rows) == sorted(
        (m, e) for m, names in groups.items() for e in names
    )
    assert all(r["steps"] == 3 and r["seconds_per_step"] > 0 for r in rows)
    everyone = {m: [f"ready-{i}" for i in range(len(names))] for m, names in groups.items()}
    # sft's two cells, then orpo's: each saw all of its group ready
    assert ready == [everyone["sft"]] * 2 + [everyone["orpo"]] * len(groups["orpo"])
    assert "paired: the engines of each (model, method) trained at the same time" in (
        table.read_text()
    )
    capsys.readouterr()
