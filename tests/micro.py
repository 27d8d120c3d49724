"""A micro experiment grid (one tiny preset, 3 steps per cell) shared by the flow tests."""

MICRO = {
    "name": "micro",
    "data": {
        "source": "synthetic",
        "synthetic": {"n_train": 48, "n_eval": 16, "n_test": 6},
        "max_length": 40,
        "max_prompt_length": 20,
        "tokenizer_vocab_size": 300,
    },
    "models": ["opt-tiny"],
    "methods": ["sft", "dpo", "orpo"],
    "orpo_lambdas": [0.5],
    "seeds": [0],
    **{
        stage: {"lr": 1e-3, "epochs": 1, "batch_size": 8, "max_steps": 3, "eval_every": 3}
        for stage in ("sft", "dpo", "orpo", "rm")
    },
    "eval": {
        "samples_per_prompt": 2,
        "max_new_tokens": 6,
        "judge": "reward-model",
        "rm_model": "opt-tiny",
        "n_bootstrap": 200,
        "embedder": "hashing",
    },
    "resources": {"procs_per_cell": 1, "max_parallel_cells": 2, "retries": 0},
}
