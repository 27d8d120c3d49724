"""The whole flow on Llama models: the real SmolLM2-135M-Instruct cut to two layers (its own
embeddings, tokenizer and chat template, given by path with a short name) and a small Llama
preset built from a config, every method, the Bradley-Terry judge on Llama, and the report."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml

from tests.micro import MICRO

pytestmark = pytest.mark.e2e

NAME = "real-micro"


@pytest.fixture(scope="module")
def finished(smollm2_two_layers, tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("home")
    raw = {
        **MICRO,
        "name": NAME,
        "data": {**MICRO["data"], "max_length": 96, "max_prompt_length": 64},
        "models": [{"name": "smol-2l", "path": smollm2_two_layers}, "llama-tiny"],
        **{
            stage: {"lr": 1e-4, "epochs": 1, "batch_size": 4, "max_steps": 2, "eval_every": 2}
            for stage in ("sft", "dpo", "orpo", "rm")
        },
        "eval": {**MICRO["eval"], "rm_model": "llama-tiny"},
        "resources": {"procs_per_cell": 1, "max_parallel_cells": 1, "retries": 0},
    }
    path = home / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(raw))
    saved = dict(os.environ)
    os.environ["ORPO_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow.db"
    try:
        with prefect_test_harness(server_startup_timeout=90):
            from flows.ablation import orpo_ablation

            html = orpo_ablation(experiment_file=str(path))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return home, html, smollm2_two_layers


def test_every_method_trains_on_both_llamas_and_the_report_uses_short_names(finished):
    home, html, model_path = finished
    results = home / "runs" / NAME / "results"
    cells = pd.read_parquet(results / "cells.parquet")
    assert set(cells.status) == {"completed"}, cells[["cell_id", "status", "error"]]
    assert set(cells.cell_id) == {
        "rm-llama-tiny-s0",
        *(f"sft-{m}-s0" for m in ("smol-2l", "llama-tiny")),
        *(f"dpo-{m}-b0.1-s0" for m in ("smol-2l", "llama-tiny")),
        *(f"orpo-{m}-l0.5-s0" for m in ("smol-2l", "llama-tiny")),
    }
    report = open(html, encoding="utf-8").read()
    assert "smol-2l" in report and model_path not in report  # no machine path in the report
    result = json.loads(
        (home / "runs" / NAME / "cells" / "orpo-smol-2l-l0.5-s0" / "result.json").read_text()
    )
    assert result["chat_format"] == "the model's chat template" and result["dropout"] == "off"
    assert result["model"] == "smol-2l" and result["model_path"] == model_path


def test_the_pretrained_model_has_a_base_row_and_the_random_preset_none(finished):
    home, html, _ = finished
    win_rates = pd.read_parquet(home / "runs" / NAME / "results" / "win_rates.parquet")
    versus_base = win_rates[win_rates.method_b == "base"]
    assert set(versus_base.model) == {"smol-2l"}
    assert set(versus_base.method_a) == {"sft", "dpo", "orpo"}
    samples = pd.read_parquet(home / "runs" / NAME / "results" / "samples.parquet")
    assert "base-smol-2l-s0" in set(samples.cell_id)
    assert "base (untrained)" in open(html, encoding="utf-8").read()
