"""Evaluation with real (tiny) models: seeded generation, generation under DeepSpeed ZeRO-3, a
Bradley-Terry reward model trained as an `rm` cell for real, and a policy cell evaluated, judged
and collected into the results folder."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from orpo import paths
from orpo.config import OptimConfig, ResourcesConfig, cell_id, expand_cells, parse_experiment
from orpo.data.prepare import prepare_data
from orpo.data.schema import read_jsonl
from orpo.data.synthetic import generate_suite
from orpo.evaluation.cell import evaluate_cell, judge_cell, judge_quality
from orpo.evaluation.collect import cell_metrics, collect_results, rerender_report
from orpo.evaluation.generate import GREEDY_SAMPLE_INDEX, generate_samples, left_pad, prompt_ids
from orpo.evaluation.judges import agreement, load_judge
from orpo.models import build_model, load_tokenizer, save_model, train_tokenizer
from orpo.pipeline import make_job, train_cell
from orpo.report.tables import load_results

pytestmark = pytest.mark.integration

GEN = dict(temperature=1.0, max_new_tokens=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and on a shared 2-core machine two OpenMP threads
    competing with other processes are up to 100x slower (measured: 10 s instead of 0.1 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised opt-tiny with a tokenizer trained on synthetic text; 5 prompts."""
    suite = generate_suite(n_train=64, n_eval=0, n_test=5, seed=0)
    texts = [m["content"] for ex in suite["train"] for m in ex.prompt]
    tokenizer = train_tokenizer(texts + [ex.chosen for ex in suite["train"]], vocab_size=300)
    return build_model("opt-tiny", tokenizer, seed=0).eval(), tokenizer, suite["test"]


def test_generation_rows_are_seeded_with_greedy_last(tiny):
    model, tokenizer, prompts = tiny
    k = 3
    rows = generate_samples(model, tokenizer, prompts, k=k, batch_size=2, seed=7, **GEN)
    assert len(rows) == len(prompts) * (k + 1)
    for i, example in enumerate(prompts):  # per prompt: samples 0..k-1, then the greedy one
        block = rows[i * (k + 1) : (i + 1) * (k + 1)]
        assert [r["prompt_id"] for r in block] == [example.id] * (k + 1)
        assert [r["sample_index"] for r in block] == [0, 1, 2, GREEDY_SAMPLE_INDEX]
        assert all(0 <= r["n_tokens"] <= GEN["max_new_tokens"] for r in block)
    rerun = generate_samples(model, tokenizer, prompts, k=k, batch_size=2, seed=7, **GEN)
    assert rerun == rows
    other = generate_samples(model, tokenizer, prompts, k=k, batch_size=2, seed=8, **GEN)
    sampled = [r["text"] for r in rows if r["sample_index"] >= 0]
    assert sampled != [r["text"] for r in other if r["sample_index"] >= 0]
    greedy = [r for r in rows if r["sample_index"] == GREEDY_SAMPLE_INDEX]
    assert greedy == [r for r in other if r["sample_index"] == GREEDY_SAMPLE_INDEX]
    # Left padding is right: a prompt's greedy answer is the same alone as in a padded batch.
    alone = generate_samples(model, tokenizer, prompts, k=1, batch_size=1, seed=0, **GEN)
    assert [r for r in alone if r["sample_index"] == GREEDY_SAMPLE_INDEX] == greedy


def test_generation_under_deepspeed_zero3_matches_plain_model(tiny, single_rank, monkeypatch):
    from orpo.training import engine as engine_module
    from orpo.training.engine import DeepSpeedEngine

    def released_between_uses(*args, **kwargs) -> dict:
        # as with several processes: no weight stays resident, the hooks gather each one
        config = deepspeed_config(*args, **kwargs)
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
        return config

    deepspeed_config = engine_module.deepspeed_config
    monkeypatch.setattr(engine_module, "deepspeed_config", released_between_uses)
    model, tokenizer, prompts = tiny
    engine = DeepSpeedEngine(
        copy.deepcopy(model),
        OptimConfig(lr=1e-3, epochs=1),
        ResourcesConfig(device="cpu", zero_stage=3),
        total_steps=1,
    )
    assert all(p.numel() == 0 for p in engine.module.parameters())  # really partitioned
    ids, mask = left_pad(
        [prompt_ids(tokenizer, ex, None) for ex in prompts], tokenizer.pad_token_id
    )
    greedy = dict(
        do_sample=False,
        max_new_tokens=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.no_grad():
        zero3_tokens = engine.module.generate(input_ids=ids, attention_mask=mask, **greedy)
        plain_tokens = model.generate(input_ids=ids, attention_mask=mask, **greedy)
    assert torch.equal(zero3_tokens, plain_tokens)
    rows = generate_samples(engine.module, tokenizer, prompts, k=2, batch_size=2, seed=0, **GEN)
    assert rows == generate_samples(model, tokenizer, prompts, k=2, batch_size=2, seed=0, **GEN)


# --- a reward-model cell trained for real -----------------------------------------------------

RM_STEPS = 64  # 2 epochs of 512 pairs; ~15 s on 1 thread
EXPERIMENT = {
    "name": "evalrm",
    "data": {"source": "synthetic", "max_length": 48, "max_prompt_length": 24,
             "tokenizer_vocab_size": 384,
             "synthetic": {"n_train": 512, "n_eval": 32, "n_test": 128, "seed": 0}},
    "models": ["opt-tiny"],
    "methods": ["sft", "orpo"],
    "orpo_lambdas": [0.1],
    "eval": {"judge": "reward-model", "rm_model": "opt-tiny", "samples_per_prompt": 3,
             "max_new_tokens": 12, "n_bootstrap": 200, "embedder": "hashing"},
    "rm": {"lr": 1.0e-3, "epochs": 2, "batch_size": 16, "max_steps": RM_STEPS,
           "eval_every": RM_STEPS, "checkpoint_every": 1000},
    "resources": {"device": "cpu", "zero_stage": 3, "threads_per_proc": 1},
}  # fmt: skip


@pytest.fixture(scope="module")
def rm_experiment(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORPO_HOME", str(tmp_path_factory.mktemp("orpo_home")))
        exp = parse_experiment(EXPERIMENT)
        prepare_data(exp, paths.data_dir(exp.name))
        rm = next(c for c in expand_cells(exp) if c.stage == "rm")
        started = time.perf_counter()
        result = train_cell(make_job(exp, rm), on_line=lambda line: None)
        print(f"rm cell: {result['steps']} steps in {time.perf_counter() - started:.1f} s")
        yield exp, result


def test_reward_model_cell_beats_chance_on_heldout_pairs(rm_experiment):
    exp, result = rm_experiment
    assert result["status"] == "completed" and result["steps"] == RM_STEPS
    row = judge_quality(exp, "reward-model")
    print(f"rm agreement on {row['n_pairs']} held-out pairs: {row['agreement_heldout']:.3f}")
    assert row["judge"] == "reward-model:rm-opt-tiny-s0" and row["n_pairs"] == 128
    # Chance is 0.5 (sd 0.044 over 128 pairs). Measured: 0.672 for seed 0 (training is
    # deterministic here); seeds 1-3 gave 0.742, 0.625, 0.664, so 0.6 holds with room.
    assert row["agreement_heldout"] >= 0.6
    # The judge reads prompt + response exactly as the rm was trained: scoring the training
    # pairs through the judge agrees with the training loop's own reward accuracy on them.
    judge = load_judge(
        "reward-model",
        paths.cell_dir(exp.name, "rm-opt-tiny-s0") / "model",
        max_length=48,
        max_prompt_length=24,
    )
    eval_pairs = read_jsonl(paths.data_dir(exp.name) / "eval.jsonl")
    metrics = [
        json.loads(line)
        for line in (paths.cell_dir(exp.name, "rm-opt-tiny-s0") / "metrics.jsonl").open()
    ]
    logged = [m["eval/reward_accuracy"] for m in metrics if "eval/reward_accuracy" in m][-1]
    assert agreement(judge, eval_pairs) == pytest.approx(logged, abs=1e-6)


def test_policy_cell_evaluated_judged_and_collected(rm_experiment):
    exp, _ = rm_experiment
    tokenizer = load_tokenizer(str(paths.data_dir(exp.name) / "tokenizer"))
    for seed, policy in enumerate(
        [cell_id("sft", "opt-tiny", 0), cell_id("orpo", "opt-tiny", 0, orpo_lambda=0.1)]
    ):
        folder = paths.cell_dir(exp.name, policy)  # an untrained policy stands in for a trained one
        save_model(build_model("opt-tiny", tokenizer, seed=seed), tokenizer, folder / "model")
        (folder / "result.json").write_text(json.dumps({"cell_id": policy, "status": "completed"}))
        samples = evaluate_cell(exp, policy)
        rows = [json.loads(line) for line in samples.open()]
        assert len(rows) == 128 * (3 + 1)
        assert len((folder / "logratios.jsonl").read_text().splitlines()) == 128
        first = samples.stat().st_mtime_ns
        assert evaluate_cell(exp, policy) == samples and samples.stat().st_mtime_ns == first
        for spec in ("reward-model", "oracle"):
            scored = [json.loads(line) for line in judge_cell(exp, policy, spec).open()]
            assert len(scored) == len(rows)
    out = collect_results(exp)
    loaded = load_results(out)
    assert {"reward-model:rm-opt-tiny-s0", "oracle"} <= set(loaded.win_rates["judge"])
    assert not loaded.samples["reward"].isna().any()
    assert set(loaded.logratios["cell_id"]) == {"sft-opt-tiny-s0", "orpo-opt-tiny-l0.1-s0"}
    metrics = cell_metrics(out)
    assert 0.0 <= metrics["orpo-opt-tiny-l0.1-s0"]["eval/win_rate_vs_sft"] <= 1.0
    assert metrics["rm-opt-tiny-s0"]["judge/agreement"] == pytest.approx(
        json.loads(
            (paths.runs_dir(exp.name) / "judges" / "reward-model_rm-opt-tiny-s0.json").read_text()
        )["agreement_heldout"]
    )
    assert rerender_report(exp.name).is_file()


def test_log_eval_metrics_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from orpo.evaluation.mlflow_log import log_eval_metrics
    from orpo.tracking import create_run

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = create_run("evaltest", "orpo-cell", tracking_uri=uri)
    log_eval_metrics(run_id, {"eval/win_rate_vs_sft": 0.75, "diversity/pid": 0.5}, tracking_uri=uri)
    logged = MlflowClient(uri).get_run(run_id).data.metrics
    assert logged == {"eval/win_rate_vs_sft": 0.75, "diversity/pid": 0.5}
