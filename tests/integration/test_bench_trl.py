"""`orpo bench --against trl` for real: TRL's ORPOTrainer and DPOTrainer train the bench's model
on its rows next to our ZeRO-3 cells, and both sides were fed the same shapes."""

from __future__ import annotations

import json

import pytest

from orpo.bench import run_benchmark
from orpo.bench_trl import trl_version
from tests.requirements import require

pytestmark = pytest.mark.integration


def test_trl_rows_train_on_the_same_shapes_as_ours(tmp_path):
    require("TRL", None if trl_version() else "TRL is not installed (pip install -e '.[bench]')")
    table = run_benchmark(
        tmp_path, steps=2, models=["opt-tiny"], engines=[("zero3", 1)], against_trl=True
    )
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    by = {(r["engine"], r["method"]): r for r in rows}
    assert ("trl", "sft") not in by  # TRL's anchor is for the preference trainers
    for method in ("dpo", "orpo"):
        ours, trl = by["zero3", method], by["trl", method]
        assert trl["steps"] == ours["steps"] == 2
        # the same pairs, batch and length limit: each side's own token count agrees closely
        assert trl["tokens_per_step"] == pytest.approx(ours["tokens_per_step"], rel=0.15)
        assert trl["step_peak_rss_mb"] > 0 and trl["seconds_per_step"] > 0
    assert "## Against TRL" in table.read_text()
