"""Tasks: generate from a trained policy, score its samples with the judge, measure the judge."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.concurrency.sync import concurrency

from orpo import paths
from orpo.config import Experiment, cell_id
from orpo.evaluation.collect import evaluate_cell, judge_cell, judge_quality
from tasks.common import load
from tasks.train import training_slots


def reward_model_dir(exp: Experiment) -> str | None:
    """The rm cell's consolidated model when the judge is our Bradley-Terry reward model."""
    if exp.eval.judge != "reward-model":
        return None
    rm = cell_id("rm", exp.eval.rm_model, exp.seeds[0])
    return str(paths.cell_dir(exp.name, rm) / "model")


@task(name="generate", task_run_name="generate-{cell_id}")
def generate_task(experiment_file: str, overrides: list[str], cell_id: str) -> str:
    exp = load(experiment_file, overrides)
    with concurrency(training_slots(exp.name), occupy=1):  # generation is as CPU-hungry
        out = evaluate_cell(exp, cell_id)
    get_run_logger().info("%s: samples in %s", cell_id, out)
    return str(out)


@task(name="judge", task_run_name="judge-{cell_id}")
def judge_task(experiment_file: str, overrides: list[str], cell_id: str) -> str:
    exp = load(experiment_file, overrides)
    out = judge_cell(exp, cell_id, exp.eval.judge, reward_model_dir(exp))
    get_run_logger().info("%s: judged by %s -> %s", cell_id, exp.eval.judge, out)
    return str(out)


@task(name="judge-quality")
def judge_quality_task(experiment_file: str, overrides: list[str]) -> dict:
    exp = load(experiment_file, overrides)
    quality = judge_quality(exp, exp.eval.judge, reward_model_dir(exp))
    get_run_logger().info("judge %s: %s", exp.eval.judge, quality)
    return quality
