"""`orpo bench --rounds`: each round trains fresh cells (a finished cell would be served from
the store, not timed again), its DPO starts from its own round's SFT model, and the rows carry
their round so that each ratio pairs cells measured side by side."""

from __future__ import annotations

import json

import pytest

from orpo.bench import run_benchmark

pytestmark = pytest.mark.integration


def test_rounds_alternate_the_engines_in_fresh_cells(tmp_path, capsys):
    table = run_benchmark(
        tmp_path,
        steps=2,
        models=["opt-tiny"],
        methods=["sft", "dpo"],
        engines=[("zero3", 1), ("torch", 1)],
        rounds=2,
    )
    lines = capsys.readouterr().out.splitlines()
    ran = [line.split(":")[0].split("] ")[1] for line in lines if line.startswith("[bench ")]
    assert ran == [
        f"opt-tiny {method} {engine} x1, round {n}/2"
        for method in ("sft", "dpo")
        for n in (1, 2)
        for engine in ("zero3", "torch")
    ]
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    # no errors: a round that reused a stored cell would be an error row ("served from the store")
    assert not [r for r in rows if "error" in r], rows
    assert sorted((r["method"], r["engine"], r["round"]) for r in rows) == sorted(
        (m, e, n) for m in ("sft", "dpo") for e in ("zero3", "torch") for n in (1, 2)
    )
    assert all(r["steps"] == 2 and r["seconds_per_step"] > 0 for r in rows)
    text = table.read_text()
    across = text.split("## Across rounds")[1]
    assert sum("| ZeRO-3 | 1 |" in line for line in across.splitlines()) == 2  # sft, dpo
