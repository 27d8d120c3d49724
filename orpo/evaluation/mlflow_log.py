"""MLflow at the edge: which metrics each cell's run gets (`cell_metrics`, read from a results
folder), and logging them and the evaluation files onto the run (run ids are passed
explicitly; MLflow's active run is thread-local)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from orpo.evaluation.judges import ORACLE
from orpo.report.tables import POOLED_SEED, load_results
from orpo.tracking import MlflowSink


def _versus(row, several_betas: bool) -> str:
    if row["method_b"] == "dpo" and several_betas:
        return f"dpo-b{row['dpo_beta_b']:g}"
    return str(row["method_b"])


def cell_metrics(results_dir: str | Path) -> dict[str, dict[str, float]]:
    """Per cell, the metrics its MLflow run gets (names from the evaluation issue):
    policy cells `eval/win_rate_vs_<method>` (+ `_ci_low`, `_ci_high`, `_sd_rounds`; and
    `eval/win_rate_ci_low/high` of the comparison with SFT, the paper's headline), by the
    headline judge; `oracle/win_rate_vs_<method>` on synthetic data; `diversity/pid`, `aid`,
    `distinct_1`, `distinct_2`. The rm cell: `judge/agreement` (held-out pairs) and
    `judge/agreement_oracle`. Per-seed rows only; `dpo-b<beta>` names B when several betas."""
    results = load_results(results_dir)
    metrics: dict[str, dict[str, float]] = {}
    win_rates = results.win_rates
    if "cell_a" in win_rates.columns:
        several_betas = win_rates["dpo_beta_b"].dropna().nunique() > 1
        for _, row in win_rates[win_rates["seed"] != POOLED_SEED].iterrows():
            prefix = (
                "eval"
                if row["judge"] == results.meta.judge
                else ("oracle" if row["judge"] == ORACLE else None)
            )
            if prefix is None:
                continue
            name = f"{prefix}/win_rate_vs_{_versus(row, several_betas)}"
            out = metrics.setdefault(str(row["cell_a"]), {})
            out[name] = row["win_rate"]
            for stat in ("ci_low", "ci_high", "sd_rounds"):
                out[f"{name}_{stat}"] = row[stat]
            if prefix == "eval" and row["method_b"] == "sft":
                out["eval/win_rate_ci_low"], out["eval/win_rate_ci_high"] = (
                    row["ci_low"],
                    row["ci_high"],
                )
    for _, row in results.diversity.iterrows():
        out = metrics.setdefault(str(row["cell_id"]), {})
        for stat in ("pid", "aid", "distinct_1", "distinct_2"):
            out[f"diversity/{stat}"] = row[stat]
    judge = results.meta.judge
    rm_cell = judge.split(":", 1)[1] if judge.startswith("reward-model:") else None
    of_judge = results.judges[results.judges["judge"] == judge]
    if rm_cell in set(results.cells["cell_id"]) and not of_judge.empty:
        out = metrics.setdefault(rm_cell, {})
        out["judge/agreement"] = of_judge["agreement_heldout"].iloc[0]
        out["judge/agreement_oracle"] = of_judge["agreement_oracle"].iloc[0]
    return {
        cell: {k: float(v) for k, v in values.items() if pd.notna(v)}
        for cell, values in metrics.items()
    }


def log_eval_metrics(
    run_id: str, metrics: Mapping[str, float], tracking_uri: str | None = None, step: int = 0
) -> None:
    """Log `metrics` (e.g. eval/win_rate_vs_sft, diversity/pid, judge/agreement) in one batch."""
    sink = MlflowSink(run_id, tracking_uri)
    sink.log_metrics(step, metrics)
    sink.flush()


def log_eval_artifacts(
    run_id: str,
    files: Iterable[str | Path],
    tracking_uri: str | None = None,
    artifact_path: str = "evaluation",
) -> None:
    """Attach evaluation files (samples.jsonl, rewards, logratios) to the cell's run."""
    sink = MlflowSink(run_id, tracking_uri)
    for path in files:
        if Path(path).is_file():
            sink.log_artifact(path, artifact_path)
