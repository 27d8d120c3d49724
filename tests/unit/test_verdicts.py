"""Verdicts you can trust: controls, per-family Holm adjustment, the judge ranking."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orpo.config import RESAMPLED_SUFFIX, control_cells, evaluated_cells, parse_experiment
from orpo.evaluation.winrates import (
    METHOD,
    NEGATIVE_CONTROL,
    POSITIVE_CONTROL,
    adjust_families,
    win_rate_rows,
)
from orpo.report.render import render_report
from orpo.report.sections.common import judge_ranking, verdict
from orpo.report.tables import POOLED_SEED, load_results
from tests.fixtures.report_fixture import write_fixture_results
from tests.micro import MICRO

pytestmark = pytest.mark.unit

PROMPTS = [f"p{i}" for i in range(40)]


def _experiment(seeds=(0, 1)):
    return parse_experiment({**MICRO, "seeds": list(seeds), "dpo_betas": [0.1, 0.5]})


def _rewards(exp, quality: dict[str, float], rng) -> pd.DataFrame:
    """Oracle-like rewards: every evaluated cell's K samples per prompt, drawn around a
    per-method quality, the same prompt effect for every cell (prompts differ in difficulty)."""
    k = exp.eval.samples_per_prompt
    difficulty = dict(zip(PROMPTS, rng.normal(0, 1, len(PROMPTS)), strict=True))
    rows = []
    for cell in evaluated_cells(exp):
        level = quality[cell.stage]
        for prompt in PROMPTS:
            for index in range(k):
                reward = level + difficulty[prompt] + rng.normal(0, 0.3)
                rows.append(
                    {"cell_id": cell.id, "judge": "oracle", "prompt_id": prompt,
                     "sample_index": index, "reward": reward}
                )  # fmt: skip
    return pd.DataFrame(rows)


def test_every_experiment_gets_a_resampled_sft_control_unless_switched_off():
    exp = _experiment()
    controls = control_cells(exp)
    assert [c.id for c in controls] == ["sft-opt-tiny-s0" + RESAMPLED_SUFFIX]
    assert controls[0].resample_of == "sft-opt-tiny-s0"
    assert controls[0].depends_on == ["sft-opt-tiny-s0"]
    assert controls[0] in evaluated_cells(exp)
    off = parse_experiment({**MICRO, "eval": {**MICRO["eval"], "resample_control": False}})
    assert control_cells(off) == []


def test_rows_carry_their_kind_and_controls_come_out_as_they_should():
    exp = _experiment()
    rng = np.random.default_rng(0)
    # base far below SFT; the resampled SFT has SFT's quality exactly
    quality = {"base": -3.0, "sft": 0.0, "dpo": 0.5, "orpo": 1.0}
    notes: list[str] = []
    usable = {c.id for c in evaluated_cells(exp)}
    rows = pd.DataFrame(win_rate_rows(exp, _rewards(exp, quality, rng), usable, notes))
    assert not notes
    kinds = rows.groupby("comparison").size().to_dict()
    assert set(kinds) == {METHOD, POSITIVE_CONTROL, NEGATIVE_CONTROL}
    positive = rows[rows["comparison"] == POSITIVE_CONTROL]
    assert (positive["method_a"] == "sft").all() and (positive["method_b"] == "base").all()
    assert (positive["ci_low"] > 0.5).all()
    negative = rows[rows["comparison"] == NEGATIVE_CONTROL]
    assert set(negative["cell_b"]) == {"sft-opt-tiny-s0" + RESAMPLED_SUFFIX, "sft-opt-tiny-s1"}
    assert ((negative["ci_low"] <= 0.5) & (negative["ci_high"] >= 0.5)).all()
    # controls are not verdicts: outside every Holm family
    assert rows.loc[rows["comparison"] != METHOD, "p_holm"].isna().all()
    # every beta is its own comparison, per seed and pooled
    dpo_vs_sft = rows[(rows["method_a"] == "dpo") & (rows["method_b"] == "sft")]
    assert sorted(dpo_vs_sft["dpo_beta_a"].unique()) == [0.1, 0.5]
    assert set(dpo_vs_sft["seed"]) == {0, 1, POOLED_SEED}


def test_holm_adjusts_within_each_judge_and_seed_family():
    def row(judge, seed, p, kind=METHOD):
        return {"judge": judge, "seed": seed, "p_value": p, "se": 0.05, "comparison": kind}

    rows = adjust_families(
        [row("oracle", 0, 0.01), row("oracle", 0, 0.04), row("oracle", 0, 0.03),
         row("rm", 0, 0.01), row("oracle", POOLED_SEED, 0.01),
         row("oracle", 0, 0.001, NEGATIVE_CONTROL)]
    )  # fmt: skip
    family = rows[:3]
    assert [r["family_size"] for r in family] == [3, 3, 3]
    assert [r["p_holm"] for r in family] == pytest.approx([0.03, 0.06, 0.06])
    assert rows[3]["p_holm"] == pytest.approx(0.01) and rows[3]["family_size"] == 1
    assert rows[4]["p_holm"] == pytest.approx(0.01)
    assert math.isnan(rows[5]["p_holm"])
    # a bigger family needs a bigger effect to be detected at its stricter level
    assert family[0]["detectable"] > rows[3]["detectable"] > 0


def test_a_raw_win_that_does_not_survive_holm_is_not_called():
    row = pd.Series(
        {"method_a": "orpo", "orpo_lambda_a": 0.5, "dpo_beta_a": math.nan, "method_b": "sft",
         "dpo_beta_b": math.nan, "ci_low": 0.51, "ci_high": 0.70, "win_rate": 0.6,
         "p_value": 0.03, "p_holm": 0.09, "comparison": METHOD}
    )  # fmt: skip
    assert verdict(row) == ("no clear winner after adjustment", "tie")
    assert verdict(row.copy().replace({0.09: 0.01}))[1] == "win"


def test_the_oracle_heads_the_judge_ranking_on_synthetic_data(tmp_path):
    results = load_results(write_fixture_results(tmp_path / "results"))
    ranking = judge_ranking(results)
    assert ranking[0].judge == "oracle"
    assert ranking[1].agreement == pytest.approx(0.83)
    html = render_report(tmp_path / "results", tmp_path / "index.html").read_text()
    assert "Judges, best first" in html
    assert "p (Holm)" in html
