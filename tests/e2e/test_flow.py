"""The orpo-ablation flow on a micro grid under prefect_test_harness: every stage real."""

import json
import os

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from orpo.timing import CELL_PHASES, EVAL_PHASES
from tests.faults import inject
from tests.micro import MICRO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("home")
    saved = dict(os.environ)
    os.environ["ORPO_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    path = home / "micro.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    with prefect_test_harness(server_startup_timeout=90):
        yield home, str(path)
    os.environ.clear()
    os.environ.update(saved)


def child_runs(home, parent_id):
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    exp = client.get_experiment_by_name("micro")
    runs = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {r.data.tags["orpo.cell_id"]: r for r in runs}


def parent_runs(home):
    client = MlflowClient(f"sqlite:///{home}/mlflow.db")
    exp = client.get_experiment_by_name("micro")
    runs = client.search_runs(
        [exp.experiment_id],
        "tags.`orpo.experiment_file` != ''",
        order_by=["attributes.start_time ASC"],
    )
    return runs


def meta_notes(results) -> list[str]:
    return json.loads((results / "meta.json").read_text())["notes"]


def test_first_run_trains_every_cell_and_reports(env):
    from flows.ablation import orpo_ablation

    home, path = env
    html = orpo_ablation(experiment_file=path)
    assert html.endswith("reports/micro/index.html") and os.path.isfile(html)
    parent = parent_runs(home)[-1]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"]
    children = child_runs(home, parent.info.run_id)
    assert set(children) == {
        "rm-opt-tiny-s0",
        "sft-opt-tiny-s0",
        "dpo-opt-tiny-b0.1-s0",
        "orpo-opt-tiny-l0.5-s0",
    }
    for run in children.values():
        assert "train/loss" in run.data.metrics and run.data.tags["orpo.cell_key"]
    results = home / "runs" / "micro" / "results"
    win_rates = pd.read_parquet(results / "win_rates.parquet")
    assert {"sft", "dpo"} <= set(win_rates.method_b)
    # the controls ran: SFT vs the random base it started from, SFT vs its resampled answers
    controls = win_rates[win_rates.comparison != "method"]
    assert set(zip(controls.comparison, controls.cell_b, strict=True)) >= {
        ("positive-control", "base-opt-tiny-s0"),
        ("negative-control", "sft-opt-tiny-s0-resampled"),
    }
    assert not meta_notes(results), meta_notes(results)  # nothing was skipped
    page = open(html, encoding="utf-8").read()
    assert "Controls" in page and "Judges, best first" in page and "p (Holm)" in page
    cells = pd.read_parquet(results / "cells.parquet")
    assert set(cells.status) == {"completed"}
    # where the time went: every phase timed, per cell in MLflow, summed in the report
    timings = pd.read_parquet(results / "timings.parquet")
    dpo = timings[timings.cell_id == "dpo-opt-tiny-b0.1-s0"].set_index("phase")["seconds"]
    assert set(dpo.index) == {*CELL_PHASES, *EVAL_PHASES} and (dpo > 0).all(), dpo
    result = json.loads((home / "runs/micro/cells/dpo-opt-tiny-b0.1-s0/result.json").read_text())
    parts = sum(result[p] for p in CELL_PHASES if p != "startup_seconds")
    assert parts <= result["wall_seconds"] < parts + 1.0  # the phases cover the worker's time
    assert children["dpo-opt-tiny-b0.1-s0"].data.metrics["cell/startup_seconds"] > 0
    assert "Where the time goes" in page


def test_report_rerenders_from_mlflow_without_training(env):
    import shutil

    from orpo.cli import main

    home, _ = env
    report = home / "reports/micro/index.html"
    shutil.rmtree(home / "runs/micro/results")  # the tables now exist only in MLflow
    report.unlink()
    cells_before = sorted((home / "runs/micro/cells").glob("*/result.json"))
    assert main(["report", "micro"]) == 0
    assert report.is_file() and 'id="headline"' in report.read_text()
    assert sorted((home / "runs/micro/cells").glob("*/result.json")) == cells_before


def test_second_run_trains_nothing(env):
    from flows.ablation import orpo_ablation

    home, path = env
    before = {p: p.stat().st_mtime for p in (home / "runs/micro/cells").glob("*/result.json")}
    orpo_ablation(experiment_file=path)
    parent = parent_runs(home)[-1]
    children = child_runs(home, parent.info.run_id)
    assert len(children) == 4
    for run in children.values():  # every cell reused, none trained
        assert run.data.tags.get("orpo.cached_from_run")
        assert "train/loss" not in run.data.metrics
    after = {p: p.stat().st_mtime for p in (home / "runs/micro/cells").glob("*/result.json")}
    assert before == after


def test_changed_lambda_trains_only_its_cell(env):
    from flows.ablation import orpo_ablation

    home, path = env
    orpo_ablation(experiment_file=path, overrides={"orpo_lambdas": [0.2]})
    children = child_runs(home, parent_runs(home)[-1].info.run_id)
    trained = {cid for cid, run in children.items() if "orpo.cached_from_run" not in run.data.tags}
    assert trained == {"orpo-opt-tiny-l0.2-s0"}


def test_failed_cell_leaves_the_others_and_is_reported(env, monkeypatch):
    from flows.ablation import orpo_ablation

    home, path = env
    bad, blocked = "sft-opt-tiny-s1", "dpo-opt-tiny-b0.1-s1"  # DPO starts from the failed SFT
    inject(monkeypatch, {bad: {"nan_at_step": 2}})
    html = orpo_ablation(experiment_file=path, seeds=[1])
    parent = parent_runs(home)[-1]
    assert parent.info.status == "FAILED"
    children = child_runs(home, parent.info.run_id)
    assert children[bad].info.status == "FAILED"
    assert blocked not in children  # never started
    assert all(r.info.status == "FINISHED" for c, r in children.items() if c != bad)
    failure = json.loads((home / "runs/micro/cells" / bad / "failure.json").read_text())
    assert "step 2" in failure["error"]
    cells = pd.read_parquet(home / "runs/micro/results/cells.parquet").set_index("cell_id")
    assert cells.loc[bad, "status"] == "failed" and "step 2" in cells.loc[bad, "error"]
    assert cells.loc[blocked, "status"] == "failed" and "not run" in cells.loc[blocked, "error"]
    assert cells.loc["orpo-opt-tiny-l0.5-s1", "status"] == "completed"
    report = open(html).read()
    assert bad in report and blocked in report


def test_bad_override_is_rejected_before_anything_runs(env):
    from flows.ablation import orpo_ablation
    from orpo.config import ConfigError

    home, path = env
    n_parents = len(parent_runs(home))
    with pytest.raises(ConfigError, match="orpo_lambdas"):
        orpo_ablation(experiment_file=path, overrides={"orpo_lambdas": [-1]})
    assert len(parent_runs(home)) == n_parents
