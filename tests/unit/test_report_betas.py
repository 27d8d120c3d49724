"""Every DPO beta and every ORPO lambda is its own variant: its own labelled row, panel and curve.

The results folder here sweeps two betas (0.1, 0.5) and two lambdas (0.1, 0.5) on one model.
Each variant gets values no other variant has, so a table that averaged two betas would show a
number (their mean) that none of the cells produced, and miss both real ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from orpo.report import load_results, render_report
from orpo.report.labels import (
    Variant,
    method_label,
    method_variants,
    policy_variants,
    rows_of_variant,
    table_variants,
)
from orpo.report.plots import training_dynamics_figure
from orpo.report.sections import diversity, log_ratios, samples, training_dynamics
from orpo.report.tables import METRIC_LOGP_CHOSEN, METRIC_LOGP_REJECTED, Results

pytestmark = pytest.mark.unit

MODEL = "tiny-opt-2l"
NAN = math.nan
# (method, orpo_lambda, dpo_beta) -> the variant's own number, reused by every table below.
VARIANTS = {
    ("sft", NAN, NAN): 0.1111,
    ("dpo", NAN, 0.1): 0.2137,
    ("dpo", NAN, 0.5): 0.7391,
    ("orpo", 0.1, NAN): 0.3163,
    ("orpo", 0.5, NAN): 0.4289,
}
# What a report that pooled the two betas would show instead of either.
POOLED_BETAS = (VARIANTS[("dpo", NAN, 0.1)] + VARIANTS[("dpo", NAN, 0.5)]) / 2
SEEDS = (0, 1)
STEPS = (0, 10, 20)


def _cell_id(method: str, orpo_lambda: float, dpo_beta: float, seed: int) -> str:
    knob = (
        f"-l{orpo_lambda:g}" if method == "orpo" else f"-b{dpo_beta:g}" if method == "dpo" else ""
    )
    return f"{method}-{MODEL}{knob}-s{seed}"


def _identities() -> list[tuple[dict, float]]:
    """Each cell's identity columns, with its variant's number."""
    return [
        (
            {
                "cell_id": _cell_id(method, orpo_lambda, dpo_beta, seed),
                "method": method,
                "model": MODEL,
                "orpo_lambda": orpo_lambda,
                "dpo_beta": dpo_beta,
                "seed": seed,
            },
            value,
        )
        for (method, orpo_lambda, dpo_beta), value in VARIANTS.items()
        for seed in SEEDS
    ]


def _tables() -> dict[str, pd.DataFrame]:
    cells, div, curves, ratios, gens = [], [], [], [], []
    for identity, value in _identities():
        cells.append(
            {**identity, "status": "completed", "error": None, "mlflow_run_url": None}
            | {"forward_passes": 10, "tokens": 100, "wall_seconds": 1.0, "peak_rss_mb": 9.0}
            | {"best_eval_loss": 1.0, "steps": STEPS[-1]}
        )
        div.append(
            {**identity, "pid": value, "aid": value / 2, "distinct_1": 0.9, "distinct_2": 0.95}
            | {"embedder": "test-embedder"}
        )
        for step in STEPS:
            for metric, sign in ((METRIC_LOGP_CHOSEN, 1), (METRIC_LOGP_REJECTED, -1)):
                curves.append(
                    {**identity, "step": step, "metric": metric, "value": sign * value * step - 1}
                )
        # Constant per variant, so its mean is exactly `10 * value` and its sd 0.
        for _ in range(4):
            ratios.append({**identity, "log_prob_ratio": 10 * value, "log_odds_ratio": value})
        gens.append(
            {**identity, "prompt_id": "p0", "prompt": "Say hi.", "sample_index": -1}
            | {"text": f"reply of {identity['cell_id']}", "reward": value}
        )
    return {
        "cells": pd.DataFrame(cells),
        "diversity": pd.DataFrame(div),
        "curves": pd.DataFrame(curves),
        "logratios": pd.DataFrame(ratios),
        "samples": pd.DataFrame(gens),
    }


def write_beta_sweep(results_dir: Path) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in _tables().items():
        frame.to_parquet(results_dir / f"{name}.parquet", index=False)
    meta = {
        "experiment": "betas",
        "data_source": "synthetic",
        "judge": "oracle",
        "models": [MODEL],
        "orpo_lambdas": [0.1, 0.5],
        "seeds": list(SEEDS),
    }
    (results_dir / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return results_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Results:
    return load_results(write_beta_sweep(tmp_path_factory.mktemp("betas") / "results"))


LABELS = ("SFT", "SFT+DPO (β=0.1)", "SFT+DPO (β=0.5)", "ORPO (λ=0.1)", "ORPO (λ=0.5)")


def _assert_every_variant_named(html: str) -> None:
    for label in LABELS:
        assert label in html
    assert ">SFT+DPO<" not in html  # no pooled, beta-less row


# --- labels -----------------------------------------------------------------------------------


def test_labels_name_every_known_knob():
    assert method_label("dpo") == "SFT+DPO"
    assert method_label("dpo", None, 0.1) == "SFT+DPO (β=0.1)"
    assert method_label("dpo", NAN, 0.5) == "SFT+DPO (β=0.5)"
    assert method_label("orpo", 0.5) == "ORPO (λ=0.5)"
    assert method_label("orpo", 1.0, None) == "ORPO (λ=1)"
    assert method_label("sft", NAN, NAN) == "SFT"


def test_variants_split_betas_and_lambdas_in_order(results):
    variants = policy_variants(results.curves)
    assert [v.label for v in variants] == list(LABELS)
    assert all(isinstance(v, Variant) for v in variants)


def test_rows_of_variant_matches_nan_and_each_beta(results):
    cells = results.cells
    for variant in table_variants(cells):
        rows = rows_of_variant(cells, *variant)
        assert len(rows) == len(SEEDS), variant
    # Left out, the beta is not filtered on: the old (method, lambda) call pools both betas.
    assert len(rows_of_variant(cells, "dpo", NAN)) == 2 * len(SEEDS)


def test_tables_without_a_beta_column_still_work(results):
    old = results.diversity.drop(columns=["dpo_beta"])
    variants = policy_variants(old)
    assert [v.label for v in variants] == ["SFT", "SFT+DPO", "ORPO (λ=0.1)", "ORPO (λ=0.5)"]
    assert len(rows_of_variant(old, *variants[1])) == 2 * len(SEEDS)
    # The (method, lambda) pairs older callers unpack are still pairs.
    assert [m for m, _ in method_variants(results.cells)] == ["sft", "dpo", "orpo", "orpo"]


# --- sections ---------------------------------------------------------------------------------


def test_diversity_has_a_row_per_beta_with_its_own_values(results):
    html = diversity.render(results).split("The paper&#x27;s Table 4")[0]
    _assert_every_variant_named(html)
    for value in VARIANTS.values():
        assert f"<td>{value:.4f}</td>" in html
    assert f"<td>{POOLED_BETAS:.4f}</td>" not in html


def test_log_ratios_have_a_row_per_beta_with_its_own_values(results):
    html = log_ratios.render(results)
    _assert_every_variant_named(html)
    for value in VARIANTS.values():
        assert f"<td>{10 * value:.3f} ± 0.000</td>" in html
    assert f"{10 * POOLED_BETAS:.3f} ±" not in html


def test_training_dynamics_names_a_column_per_beta(results):
    html = training_dynamics.render(results)
    assert "<img" in html
    _assert_every_variant_named(html)


def test_training_dynamics_draws_each_betas_own_curve_from_step_0(results):
    variants = policy_variants(results.curves)
    fig = training_dynamics_figure(results.curves, [MODEL], variants)
    panels = {ax.get_title(): ax for ax in fig.axes}
    for variant in variants:
        ax = panels[f"{MODEL}: {variant.label}"]
        chosen = ax.get_lines()[0]
        assert list(chosen.get_xdata()) == list(STEPS)  # step 0 kept, first
        assert ax.get_xlim()[0] <= 0
        # Its own values (mean over seeds of `value * step - 1`), not the betas' average.
        expected = [VARIANTS[_key(variant)] * step - 1 for step in STEPS]
        assert list(chosen.get_ydata()) == pytest.approx(expected)


def test_samples_show_a_row_per_beta(results):
    html = samples.render(results)
    _assert_every_variant_named(html)
    for value in VARIANTS.values():
        assert f"<td>{value:.3f}</td>" in html  # each variant's own reward
    assert f"<td>{POOLED_BETAS:.3f}</td>" not in html


def test_the_whole_report_keeps_betas_apart(tmp_path):
    results_dir = write_beta_sweep(tmp_path / "results")
    page = render_report(results_dir, tmp_path / "index.html").read_text(encoding="utf-8")
    for section_id in ("training-dynamics", "log-ratios", "diversity", "samples"):
        html = page.split(f'<section id="{section_id}">')[1].split("</section>")[0]
        assert "render-failed" not in html, section_id
        assert "β=0.1" in html and "β=0.5" in html, section_id


def _key(variant: Variant) -> tuple:
    """The VARIANTS key of a variant (NaN keys do not compare equal, so match by position)."""
    for key in VARIANTS:
        if key[0] == variant.method and all(
            (math.isnan(a) and math.isnan(b)) or a == b
            for a, b in zip(key[1:], variant[1:], strict=True)
        ):
            return key
    raise KeyError(variant)
