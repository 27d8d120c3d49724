"""Tasks: generate from a trained policy, score its samples with the judge, measure the judge."""

from __future__ import annotations

import os
from contextlib import contextmanager

from prefect import get_run_logger, task

from orpo.config import Experiment
from orpo.evaluation.cell import default_rm_model_dir
from orpo.evaluation.collect import evaluate_cell, judge_cell, judge_quality
from tasks.train import training_slot


@contextmanager
def torch_threads(exp: Experiment):
    """Share the cores with the cells training beside us (2 threads each is much slower on a
    busy 2-core machine than 1)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // exp.resources.max_parallel_cells))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def reward_model_dir(exp: Experiment) -> str | None:
    """The rm cell's consolidated model when the judge is our Bradley-Terry reward model."""
    if exp.eval.judge != "reward-model":
        return None
    return str(default_rm_model_dir(exp))


@task(name="generate", task_run_name="generate-{cell_id}")
def generate_task(exp: Experiment, cell_id: str) -> str:
    with training_slot(exp, f"generate {cell_id}", get_run_logger().info):  # as CPU-hungry
        with torch_threads(exp):
            out = evaluate_cell(exp, cell_id)
    get_run_logger().info("%s: samples in %s", cell_id, out)
    return str(out)


@task(name="judge", task_run_name="judge-{cell_id}")
def judge_task(exp: Experiment, cell_id: str) -> str:
    with torch_threads(exp):
        out = judge_cell(exp, cell_id, exp.eval.judge, reward_model_dir(exp))
    get_run_logger().info("%s: judged by %s -> %s", cell_id, exp.eval.judge, out)
    return str(out)


@task(name="judge-quality")
def judge_quality_task(exp: Experiment) -> dict:
    quality = judge_quality(exp, exp.eval.judge, reward_model_dir(exp))
    get_run_logger().info("judge %s: %s", exp.eval.judge, quality)
    return quality
