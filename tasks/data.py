"""Task: prepare the experiment's data once (train/eval/test JSONL and the preset tokenizer)."""

from __future__ import annotations

from prefect import get_run_logger, task

from orpo import paths
from orpo.data.prepare import prepare_data
from tasks.common import load


@task(name="prepare-data")
def prepare_data_task(experiment_file: str, overrides: list[str]) -> str:
    exp = load(experiment_file, overrides)
    out = prepare_data(exp, paths.data_dir(exp.name))
    get_run_logger().info("data ready in %s: %s", out, (out / "manifest.json").read_text())
    return str(out)
