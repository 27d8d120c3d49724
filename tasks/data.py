"""Task: prepare the experiment's data once (train/eval/test JSONL and the preset tokenizer)."""

from __future__ import annotations

import json

from prefect import get_run_logger, task

from orpo import paths
from orpo.config import Experiment
from orpo.data.prepare import prepare_data


@task(name="prepare-data")
def prepare_data_task(exp: Experiment) -> str:
    out = prepare_data(exp, paths.data_dir(exp.name))
    manifest = json.loads((out / "manifest.json").read_text())
    # counts and cleaning only: the manifest also lists every chosen row id (~160k for HH-RLHF)
    get_run_logger().info(
        "data ready in %s: %s; cleaning %s", out, manifest["counts"], manifest.get("cleaning")
    )
    return str(out)
