"""The `orpo-ablation` flow: one experiment file -> training cells -> generations -> judged win
rates -> HTML report. It only composes tasks; the work is in `orpo/` behind `tasks/`.

Dependencies: data before everything; pretrain -> sft -> dpo, pretrain -> orpo/rm (from
`orpo.config.expand_cells`); the reward-model judge before any judging; every cell before the
report, which runs even when some cells failed (it says which and why).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_client, get_run_logger
from prefect.futures import wait
from prefect.runtime import flow_run

from orpo import live_runs, paths, recovery, tracking
from orpo.config import (
    DpoBeta,
    Experiment,
    Method,
    OrpoLambda,
    evaluated_cells,
    expand_cells,
    load_experiment,
    rm_cell_id,
)
from orpo.report.tables import table_file
from orpo.timing import breakdown_lines
from orpo.training.launch import stop_live_cells
from tasks.common import flow_run_info
from tasks.data import prepare_data_task
from tasks.evaluate import generate_task, judge_quality_task, judge_task
from tasks.report import report_task
from tasks.train import train_cell_task, training_slots


def overrides_to_args(overrides: dict[str, Any] | None) -> list[str]:
    """{"orpo_lambdas": [0.2], "eval.temperature": 0.7} -> ["orpo_lambdas=[0.2]", ...]: the same
    `--set key=value` strings `orpo run` takes, validated by the same schema."""
    import json

    return [f"{key}={json.dumps(value)}" for key, value in (overrides or {}).items()]


@flow(name="orpo-ablation", log_prints=True)
def orpo_ablation(
    experiment_file: str = "experiments/smoke.yaml",
    orpo_lambdas: list[OrpoLambda] | None = None,
    dpo_betas: list[DpoBeta] | None = None,
    seeds: list[int] | None = None,
    models: list[str] | None = None,
    methods: list[Method] | None = None,
    overrides: dict[str, Any] | None = None,
) -> str:
    """Run an experiment grid.

    The grid knobs are typed parameters, so a Prefect server rejects a bad value (say a
    negative orpo_lambda) before it creates the flow run; `overrides` maps any other dotted
    experiment key to a value, validated by the experiment schema before any task runs."""
    logger = get_run_logger()
    started = time.monotonic()
    knobs = {
        "orpo_lambdas": orpo_lambdas,
        "dpo_betas": dpo_betas,
        "seeds": seeds,
        "models": models,
        "methods": methods,
    }
    args = overrides_to_args(
        {**(overrides or {}), **{k: v for k, v in knobs.items() if v is not None}}
    )
    exp = load_experiment(experiment_file, args)  # a bad file or override fails here, first
    cells = expand_cells(exp)
    logger.info("experiment %s: %d cells", exp.name, len(cells))
    tracking.ensure_experiment(exp.name)  # before the fan-out: concurrent creation races
    parent = tracking.create_run(
        exp.name,
        f"ablation-{exp.name}",
        tags={
            "orpo.experiment_file": experiment_file,
            "orpo.overrides": " ".join(args),
            **flow_run_info(),
        },
    )
    tracking.MlflowSink(parent).log_params(exp.model_dump(mode="json"))
    this_run = str(flow_run.id)
    recovery.crash_dead_runs(exp.name, logger.warning)
    live_runs.register(exp.name, this_run, parent)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(
            training_slots(exp.name), exp.resources.max_parallel_cells
        )
    recovery.reclaim_slots(exp.name, this_run, training_slots(exp.name), logger.warning)

    try:
        data, trained, evaluated = _fan_out(exp, parent)
        wait([data])
        setup_seconds = time.monotonic() - started
        wait([*trained.values(), *evaluated])
        unfinished = {
            cid: str(f.state.message) for cid, f in trained.items() if not f.state.is_completed()
        }
        reporting = time.monotonic()
        html = report_task.submit(exp, parent, unfinished).result()
        report_seconds = time.monotonic() - reporting
    except BaseException:
        # Cancelled (Prefect turns the SIGTERM into an exception here, in the main thread) or
        # crashed: stop the DeepSpeed processes, which live in their own sessions and would
        # otherwise train on, and keep this process alive through their task threads.
        stop_live_cells()
        tracking.end_run(parent, "KILLED")
        raise
    finally:
        live_runs.unregister(exp.name, this_run)
    timings = pd.read_parquet(paths.results_dir(exp.name) / table_file("timings"))  # this one table
    timings = timings.to_dict("records")
    wall = time.monotonic() - started
    logger.info(breakdown_lines(timings, wall, setup_seconds, report_seconds))
    tracking.end_run(parent, "FAILED" if unfinished else "FINISHED")
    if unfinished:
        logger.warning("cells that did not finish: %s (the report says why)", ", ".join(unfinished))
    return html


def _fan_out(exp: Experiment, parent: str) -> tuple[Any, dict, list]:
    """Submit data, every training cell (after the cells it starts from), and generation and
    judging of every policy and base row (after its cell and the reward-model judge). Tasks get
    the validated experiment and cell objects, parsed once by the flow."""
    data = prepare_data_task.submit(exp)
    cells = expand_cells(exp)
    trained = {}
    for cell in cells:  # dependency order: upstream futures exist already
        upstream = [trained[d] for d in cell.depends_on]
        trained[cell.id] = train_cell_task.with_options(retries=exp.resources.retries).submit(
            exp, cell, parent, wait_for=[data, *upstream],
        )  # fmt: skip
    judge_ready = _judge_dependencies(exp, trained)
    evaluated = [judge_quality_task.submit(exp, wait_for=[data, *judge_ready])]
    for cell in evaluated_cells(exp):
        # a policy waits for its training; a base row for the data (and its pretrain cell)
        ready = (
            [trained[cell.id]] if cell.id in trained else [data, *map(trained.get, cell.depends_on)]
        )
        gen = generate_task.submit(exp, cell.id, wait_for=ready)
        judged = judge_task.submit(exp, cell.id, wait_for=[gen, *judge_ready])
        evaluated += [gen, judged]
    return data, trained, evaluated


def _judge_dependencies(exp: Experiment, trained: dict) -> list:
    if exp.eval.judge != "reward-model":
        return []
    return [trained[rm_cell_id(exp)]]


def run_experiment(exp: Experiment, experiment_file: str, overrides: list[str]) -> Path:
    """`orpo run`: the flow in-process (Prefect starts a temporary local API when
    PREFECT_API_URL is unset). Overrides arrive as `key=value` strings."""
    from orpo.config import parse_overrides

    as_dict = dict(parse_overrides(overrides))
    return Path(orpo_ablation(experiment_file=experiment_file, overrides=as_dict))
