"""Task: collect every cell's results into tidy tables, render the HTML report, publish it to
MLflow (parent run) and Prefect (table + link artifacts)."""

from __future__ import annotations

import json
import os

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_table_artifact

from orpo import paths, tracking
from orpo.config import Experiment
from orpo.evaluation.collect import collect_results
from orpo.evaluation.mlflow_log import cell_metrics, log_eval_artifacts, log_eval_metrics
from orpo.report.render import render_report
from tasks.common import flow_run_info


def mlflow_ui_url() -> str:
    return os.environ.get("ORPO_MLFLOW_UI_URL", "http://127.0.0.1:5000")


def run_url(run_id: str, experiment_id: str) -> str:
    return f"{mlflow_ui_url()}/#/experiments/{experiment_id}/runs/{run_id}"


def artifact_key(experiment: str, what: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    key = f"{experiment}-{what}".lower()
    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in key)


@task(name="report")
def report_task(
    exp: Experiment,
    parent_run_id: str,
    unfinished: dict[str, str] | None = None,
) -> str:
    """`unfinished`: cells of this flow run that did not complete, with Prefect's message."""
    logger = get_run_logger()
    for cid, message in (unfinished or {}).items():
        _record_not_run(exp.name, cid, message)
    experiment_id = tracking.ensure_experiment(exp.name)
    info = flow_run_info()
    cell_runs = _cell_run_ids(exp.name)
    results = collect_results(
        exp,
        meta_extra={
            "prefect_flow_run_url": info.get("prefect.flow_run_url"),
            "mlflow_parent_run_url": run_url(parent_run_id, experiment_id),
            "cell_run_urls": {cid: run_url(rid, experiment_id) for cid, rid in cell_runs.items()},
        },
    )
    for cid, metrics in cell_metrics(results).items():  # evaluation metrics on each cell's run
        if metrics and cid in cell_runs:
            log_eval_metrics(cell_runs[cid], metrics)
            cell = paths.cell_dir(exp.name, cid)
            files = [cell / "samples.jsonl", cell / "logratios.jsonl", *cell.glob("rewards/*")]
            log_eval_artifacts(cell_runs[cid], files)  # skips files that do not exist
    html = render_report(results, paths.report_path(exp.name))
    sink = tracking.MlflowSink(parent_run_id)
    sink.log_artifact(html, "report")
    for table in sorted(results.glob("*.parquet")) + [results / "meta.json"]:
        sink.log_artifact(table, "results")
    _publish_prefect_artifacts(exp.name, results, html, parent_run_id, experiment_id)
    logger.info("report: %s", html)
    return str(html)


def _record_not_run(experiment: str, cid: str, message: str) -> None:
    """A cell that failed wrote failure.json itself; one that never ran (its input cell failed)
    gets one here, so an old result.json of an earlier configuration is not reported."""
    folder = paths.cell_dir(experiment, cid)
    if not (folder / "failure.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        error = {"cell_id": cid, "error": f"not run in this flow run: {message}"}
        (folder / "failure.json").write_text(json.dumps(error))


def _cell_run_ids(experiment: str) -> dict[str, str]:
    """Each cell's latest MLflow run (its job.json carries the id it logged to)."""
    runs = {}
    for job_path in sorted((paths.runs_dir(experiment) / "cells").glob("*/job.json")):
        run_id = json.loads(job_path.read_text()).get("mlflow_run_id")
        if run_id:
            runs[job_path.parent.name] = run_id
    return runs


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
