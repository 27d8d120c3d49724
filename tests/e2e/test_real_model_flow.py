"""The whole flow on users' kinds of models: the real SmolLM2-135M-Instruct cut to two layers
(its own embeddings, tokenizer and chat template, given by path with a short name), a user's own
OPT-shaped checkpoint (the real vocabulary size, 50272, and hub OPT's dropout 0.1) and a small
Llama preset built from a config: every method, the Bradley-Terry judge on Llama, the report."""

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
def byo_opt(tmp_path_factory) -> str:
    """A local OPT folder as a user would bring one: real vocabulary size, dropout 0.1, small
    hidden size so it trains in seconds, and its tokenizer."""
    from transformers import OPTConfig, OPTForCausalLM

    from orpo.data.prepare import tokenizer_corpus
    from orpo.data.synthetic import generate_suite
    from orpo.models import train_tokenizer

    folder = tmp_path_factory.mktemp("byo") / "My-OPT-Checkpoint"
    tokenizer = train_tokenizer(tokenizer_corpus(generate_suite(64, 8, 8, seed=1)["train"]), 300)
    config = OPTConfig(
        vocab_size=50272, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=128, dropout=0.1,
        attention_dropout=0.1, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def finished(smollm2_two_layers, byo_opt, tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    home = tmp_path_factory.mktemp("home")
    raw = {
        **MICRO,
        "name": NAME,
        "data": {**MICRO["data"], "max_length": 96, "max_prompt_length": 64},
        "models": [{"name": "smol-2l", "path": smollm2_two_layers}, byo_opt, "llama-tiny"],
        **{
            stage: {"lr": 1e-4, "epochs": 1, "batch_size": 4, "max_steps": 2, "eval_every": 2}
            for stage in ("sft", "dpo", "orpo", "rm")
        },
        # the resampled-SFT control is the micro flow's to test; here it would only add time
        "eval": {**MICRO["eval"], "rm_model": "llama-tiny", "resample_control": False},
        "resources": {"procs_per_cell": 1, "max_parallel_cells": 2, "retries": 0},
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
    models = ("smol-2l", "my-opt-checkpoint", "llama-tiny")  # the folder's name, lowercased
    assert set(cells.cell_id) == {
        "rm-llama-tiny-s0",
        *(f"sft-{m}-s0" for m in models),
        *(f"dpo-{m}-b0.1-s0" for m in models),
        *(f"orpo-{m}-l0.5-s0" for m in models),
    }
    assert cells.truncation.str.fullmatch(r"\d+ / \d+ / \d+ of \d+").all()  # shown per cell
    report = open(html, encoding="utf-8").read()
    assert "prompt cut / response cut / dropped" in report
    assert "smol-2l" in report and model_path not in report  # no machine path in the report
    result = json.loads(
        (home / "runs" / NAME / "cells" / "orpo-smol-2l-l0.5-s0" / "result.json").read_text()
    )
    assert result["chat_format"] == "the model's chat template" and result["dropout"] == "off"
    assert result["model"] == "smol-2l" and result["model_path"] == model_path
    byo = home / "runs" / NAME / "cells" / "sft-my-opt-checkpoint-s0" / "result.json"
    assert json.loads(byo.read_text())["dropout"] == "off"


def test_every_model_has_a_base_row_the_random_preset_too(finished):
    home, html, _ = finished
    win_rates = pd.read_parquet(home / "runs" / NAME / "results" / "win_rates.parquet")
    versus_base = win_rates[win_rates.method_b == "base"]
    assert set(versus_base.model) == {"smol-2l", "my-opt-checkpoint", "llama-tiny"}
    assert set(versus_base.method_a) == {"sft", "dpo", "orpo"}
    samples = pd.read_parquet(home / "runs" / NAME / "results" / "samples.parquet")
    assert "base-smol-2l-s0" in set(samples.cell_id)
    assert "base (before fine-tuning)" in open(html, encoding="utf-8").read()
