"""Task: collect every cell's results into tidy tables, render the HTML report, publish it to
MLflow (parent run) and Prefect (table + link artifacts)."""

from __future__ import annotations

import json
import os

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from orpo import paths, tracking
from orpo.evaluation.collect import collect_results
from orpo.report.render import render_report
from tasks.common import flow_run_info, load


def mlflow_ui_url() -> str:
    return os.environ.get("ORPO_MLFLOW_UI_URL", "http://127.0.0.1:5000")


def run_url(run_id: str, experiment_id: str) -> str:
    return f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_key(experiment: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = f"{experiment}-{what}".lower()
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in key)


@task(name="report")
def report_task(experiment_file: str, overrides: list[str], parent_run_id: str) -> str:
    logger = get_run_logger()
    exp = load(experiment_file, overrides)
    experiment_id = tracking.ensure_experiment(exp.name)
    info = flow_run_info()
    results, cell_metrics = collect_results(
        exp,
        meta_extra={
            "prefect_flow_run_url": info.get("prefect.flow_run_url"),
            "mlflow_parent_run_url": run_url(parent_run_id, experiment_id),
        },
    )
    _log_cell_metrics(exp.name, cell_metrics)
    html = render_report(results, paths.report_path(exp.name))
    sink = tracking.MlflowSink(parent_run_id)
    sink.log_artifact(html, "report")
    for table in sorted(results.glob("*.parquet")) + [results / "meta.json"]:
        sink.log_artifact(table, "results")
    _publish_prefect_artifacts(exp.name, results, html, parent_run_id, experiment_id)
    logger.info("report: %s", html)
    return str(html)


def _log_cell_metrics(experiment: str, cell_metrics: dict[str, dict[str, float]]) -> None:
    """Evaluation metrics go to each cell's own (latest) MLflow run."""
    for cid, metrics in cell_metrics.items():
        job_path = paths.cell_dir(experiment, cid) / "job.json"
        if not metrics or not job_path.is_file():
            continue
        run_id = json.loads(job_path.read_text()).get("mlflow_run_id")
        if run_id:
            sink = tracking.MlflowSink(run_id)
            sink.log_metrics(0, metrics)
            sink.flush()


def _publish_prefect_artifacts(
    experiment: str, results, html, parent_run_id: str, experiment_id: str
) -> None:
    import pandas as pd

    rows = []
    win_rates = results / "win_rates.parquet"
    if win_rates.is_file():
        for r in pd.read_parquet(win_rates).itertuples():
            lam = "" if pd.isna(r.orpo_lambda_a) else f" (lambda {r.orpo_lambda_a:g})"
            rows.append(
                {
                    "model": r.model,
                    "comparison": f"{r.method_a}{lam} vs {r.method_b}",
                    "seed": "pooled" if r.seed == -1 else int(r.seed),
                    "win rate": f"{r.win_rate:.3f} (sd {r.sd_rounds:.3f})",
                    "95% CI": f"[{r.ci_low:.3f}, {r.ci_high:.3f}]",
                    "judge": r.judge,
                }
            )
    create_table_artifact(
        rows or [{"note": "no win rates: see the report"}],
        key=artifact_key(experiment, "win-rates"),
        description=f"Headline win rates of {experiment}",
    )
    # Markdown artifacts are sanitised, so the report is linked, not embedded: the MLflow run
    # shows it in an iframe, the file is on disk beside the repository.
    create_link_artifact(
        run_url(parent_run_id, experiment_id),
        link_text=f"HTML report of {experiment} (MLflow run artifacts)",
        key=artifact_key(experiment, "report"),
        description=f"Report file: {html}",
    )
