"""Defects that only bite at real scale (GPUs, hub checkpoints), caught on the CPU: devices,
dropout, the reference cache key, length settings, model names and model sources."""

from __future__ import annotations

import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from orpo.config import ConfigError, Experiment, expand_cells, parse_experiment, short_model_name
from orpo.data.synthetic import generate_suite
from orpo.models import build_model, train_tokenizer
from orpo.training.batches import StageData
from orpo.training.job import CellJob
from orpo.training.loop import on_device
from orpo.training.objectives import OBJECTIVES, Norms, ObjectiveConfig, pair_logps
from orpo.training.worker import reference_cache_key
from tests.micro import MICRO

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def suite():
    return generate_suite(16, 4, 2, seed=0)


@pytest.fixture(scope="module")
def tokenizer(suite):
    texts = [ex.chosen for ex in suite["train"]] + [m["content"] for ex in suite["train"]
                                                     for m in ex.prompt]  # fmt: skip
    return train_tokenizer(texts, vocab_size=300)


def _on_meta(model):
    # sdpa's mask helper reads a value off the mask (`.item()`), which meta tensors cannot give
    model.set_attn_implementation("eager")
    return model.to("meta")


def _stage_data(stage: str, suite, tokenizer) -> StageData:
    from orpo.data.tokenize import collate_chosen, collate_pairs, collate_texts, encode_pairs

    pairs, _ = encode_pairs(tokenizer, suite["train"], 40, 20)
    pad = tokenizer.pad_token_id
    if stage == "pretrain":
        texts = [p.prompt_ids + p.chosen_ids for p in pairs]
        return StageData(texts, texts, lambda items: collate_texts(items, pad))
    if stage == "sft":
        return StageData(pairs, pairs, lambda items: collate_chosen(items, pad))
    return StageData(pairs, pairs, lambda items: collate_pairs(items, pad))


@pytest.mark.parametrize("stage", ["pretrain", "sft", "orpo", "dpo", "rm"])
def test_every_objective_runs_with_model_and_batch_off_the_cpu(stage, suite, tokenizer):
    """The meta device stands in for a GPU: any tensor left on the CPU (as the DPO reference
    cache was) raises 'Tensor on device cpu is not on the expected device meta'."""
    kind = "reward" if stage == "rm" else "causal-lm"
    model = _on_meta(build_model("opt-tiny", tokenizer, kind=kind))
    data = _stage_data(stage, suite, tokenizer)
    batch = data.batch(data.train, [0, 1, 2, 3])
    ref_cache = torch.randn(len(data.train), 2) if stage == "dpo" else None  # built on the CPU
    inputs, ref = on_device(batch, ref_cache, torch.device("meta"))
    cfg = ObjectiveConfig(stage=stage, orpo_lambda=0.1, dpo_beta=0.1)
    loss, stats = OBJECTIVES[stage](model, inputs, Norms(tokens=10.0, examples=4.0), cfg, ref)
    assert loss.device.type == "meta" and loss.shape == ()
    assert all(v.device.type == "meta" for v in stats.values())
    if stage in ("orpo", "dpo"):  # the reference pass and the report's log ratios
        summed, mean = pair_logps(model, inputs)
        assert summed.device.type == "meta" and summed.shape == (4, 2)


def test_without_the_move_the_cpu_cache_meets_the_device_and_fails(suite, tokenizer):
    model = _on_meta(build_model("opt-tiny", tokenizer))
    data = _stage_data("dpo", suite, tokenizer)
    batch = data.batch(data.train, [0, 1])
    inputs, _ = on_device(batch, None, torch.device("meta"))
    stale = torch.randn(len(data.train), 2)[batch["indices"]]  # what the loop used to pass
    cfg = ObjectiveConfig(stage="dpo", dpo_beta=0.1)
    with pytest.raises(RuntimeError, match="device"):
        OBJECTIVES["dpo"](model, inputs, Norms(tokens=1.0, examples=2.0), cfg, stale)


def _opt_checkpoint_with_dropout(folder, tokenizer) -> None:
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64, dropout=0.1,
        attention_dropout=0.1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    OPTForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_dropout_is_off_by_default_and_kept_on_request(tmp_path, tokenizer):
    _opt_checkpoint_with_dropout(tmp_path / "ckpt", tokenizer)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def two_train_mode_passes(**kwargs):
        model = build_model(str(tmp_path / "ckpt"), tokenizer, **kwargs).train()
        torch.manual_seed(0)
        first = model(input_ids=ids).logits
        return first, model(input_ids=ids).logits, model

    a, b, model = two_train_mode_passes()
    assert torch.equal(a, b), "train mode must be deterministic with dropout off"
    assert model.config.dropout == 0.0 and model.config.attention_dropout == 0.0
    a, b, model = two_train_mode_passes(keep_dropout=True)
    assert not torch.equal(a, b) and model.config.dropout == 0.1


def test_keep_dropout_is_validated_and_reaches_the_job():
    from orpo.pipeline import make_job

    exp = parse_experiment({**MICRO, "keep_dropout": True})
    job = make_job(exp, expand_cells(exp)[0])
    assert job.keep_dropout and job.training_params()["keep_dropout"] is True
    with pytest.raises(ConfigError, match="keep_dropout"):
        parse_experiment({**MICRO, "keep_dropout": "sometimes"})


def test_reference_cache_key_covers_precision_device_and_world(tmp_path):
    for folder in ("ref", "data"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.json").write_text(folder)
    job = CellJob.model_validate(
        {
            "experiment": "e",
            "cell": {"id": "dpo-m-b0.1-s0", "stage": "dpo", "model": "m", "seed": 0},
            "model": "m",
            "init_from": str(tmp_path / "ref"),
            "data_dir": str(tmp_path / "data"),
            "out_dir": str(tmp_path / "out"),
            "optim": {"lr": 1e-5, "epochs": 1},
        }
    )
    base = reference_cache_key(job, "fp32", "cpu", 1)
    assert reference_cache_key(job, "fp32", "cpu", 1) == base
    assert reference_cache_key(job, "bf16", "cpu", 1) != base
    assert reference_cache_key(job, "fp32", "cuda", 1) != base
    assert reference_cache_key(job, "fp32", "cpu", 2) != base
    longer = job.model_copy(update={"max_length": job.max_length + 1})
    assert reference_cache_key(longer, "fp32", "cpu", 1) != base


# --- settings ----------------------------------------------------------------------------------


def test_a_disabled_pretrain_stage_needs_no_settings():
    exp = parse_experiment({**MICRO, "pretrain": {"enabled": False}})
    assert not any(c.stage == "pretrain" for c in expand_cells(exp))
    with pytest.raises(ConfigError, match="pretrain.lr and pretrain.epochs must be given"):
        parse_experiment({**MICRO, "pretrain": {"enabled": True}})


@pytest.mark.parametrize("prompt", [40, 36])
def test_prompts_must_leave_room_for_a_response(prompt):
    raw = {**MICRO, "data": {**MICRO["data"], "max_length": 40, "max_prompt_length": prompt}}
    with pytest.raises(
        ConfigError, match=r"data.max_prompt_length=\d+ leaves \d+ of data.max_length"
    ):
        parse_experiment(raw)


def test_shipped_paper_grid_leaves_room_for_responses():
    from orpo.config import load_experiment

    exp = load_experiment("experiments/paper-hh-rlhf.yaml")
    assert exp.data.max_length - exp.data.max_prompt_length >= exp.data.max_length // 2


# --- model names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, name",
    [
        ("opt-tiny", "opt-tiny"),
        ("opt-1.3b", "opt-1.3b"),
        ("facebook/opt-125m", "opt-125m"),
        ("/tmp/work/models/SmolLM2-135M-Instruct/", "smollm2-135m-instruct"),
        ("/data/My Model.gguf", "my-model"),
        ("smollm2-135m-instruct", "smollm2-135m-instruct"),
    ],
)
def test_short_model_names(path, name):
    assert short_model_name(path) == name


def test_models_get_short_names_in_cell_ids_and_keep_their_paths():
    exp = parse_experiment(
        {**MICRO, "models": ["opt-tiny", {"name": "smol", "path": "/abs/path/SmolLM2"}]}
    )
    assert exp.model_names == ["opt-tiny", "smol"]
    assert exp.model_path("smol") == "/abs/path/SmolLM2"
    ids = [c.id for c in expand_cells(exp)]
    assert "sft-smol-s0" in ids and not any("/" in i or "abs" in i for i in ids)


def test_two_models_never_share_a_name():
    with pytest.raises(ConfigError, match=r"models.0 and models.1 share the name 'smollm2'"):
        parse_experiment({**MICRO, "models": ["/a/SmolLM2", "/b/SmolLM2"]})
    exp = parse_experiment(
        {**MICRO, "models": ["/a/SmolLM2", {"name": "smollm2-b", "path": "/b/SmolLM2"}]}
    )
    assert exp.model_names == ["smollm2", "smollm2-b"]


def test_model_entry_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"models.0.name: String should match pattern"):
        parse_experiment({**MICRO, "models": [{"name": "Bad Name", "path": "opt-tiny"}]})
    with pytest.raises(ConfigError, match=r"models.0.size: unknown key"):
        parse_experiment({**MICRO, "models": [{"path": "opt-tiny", "size": 3}]})


def test_reward_model_named_by_path_uses_the_entry_name():
    exp = parse_experiment(
        {
            **MICRO,
            "models": [{"name": "smol", "path": "/x/SmolLM2"}],
            "eval": {**MICRO["eval"], "rm_model": "/x/SmolLM2"},
        }
    )
    assert exp.rm_model_name == "smol" and "rm-smol-s0" in [c.id for c in expand_cells(exp)]


def test_experiment_schema_has_models_as_entries():
    assert "ModelEntry" in str(Experiment.model_json_schema()["$defs"])


# --- base rows ---------------------------------------------------------------------------------


def test_every_model_gets_a_base_row_unless_switched_off():
    from orpo.config import base_cells, evaluated_cells
    from orpo.evaluation.winrates import POSITIVE_CONTROL, comparisons

    exp = parse_experiment(
        {**MICRO, "models": ["opt-tiny", {"name": "smol", "path": "/abs/SmolLM2"}]}
    )
    assert [c.id for c in base_cells(exp)] == ["base-opt-tiny-s0", "base-smol-s0"]
    assert "base-smol-s0" in [c.id for c in evaluated_cells(exp)]
    versus = {(a.id, b.id, kind) for a, b, kind in comparisons(exp, "smol", 0) if b.stage == "base"}
    assert versus == {
        ("sft-smol-s0", "base-smol-s0", POSITIVE_CONTROL),
        ("dpo-smol-b0.1-s0", "base-smol-s0", "method"),
        ("orpo-smol-l0.5-s0", "base-smol-s0", "method"),
    }
    off = parse_experiment({**MICRO, "eval": {**MICRO["eval"], "base_row": False}})
    assert base_cells(off) == []
    assert not any(b.stage == "base" for _, b, _ in comparisons(off, "opt-tiny", 0))


def test_a_base_row_starts_where_its_methods_start():
    from orpo.config import base_cells
    from orpo.pipeline import starting_point

    exp = parse_experiment({**MICRO, "models": [{"name": "smol", "path": "/abs/SmolLM2"}]})
    assert starting_point(exp, base_cells(exp)[0]) == "/abs/SmolLM2"
    pretrained = {
        **MICRO,
        "pretrain": {"lr": 1e-3, "epochs": 1},
        "eval": {**MICRO["eval"], "base_row": True},
    }
    exp = parse_experiment(pretrained)
    base = base_cells(exp)[0]
    assert base.depends_on == ["pretrain-opt-tiny-s0"]
    assert starting_point(exp, base).endswith("cells/pretrain-opt-tiny-s0/model")


def test_plan_counts_the_rows_of_a_local_dump_and_estimates_gpu_hours():
    from pathlib import Path

    from orpo.plan import count_rows, n_train_pairs, plan_lines

    fixture = Path(__file__).parents[1] / "fixtures" / "hh_rlhf.jsonl"
    rows = sum(1 for line in fixture.read_text().splitlines() if line.strip())
    assert count_rows(str(fixture)) == rows and count_rows("Anthropic/hh-rlhf") is None
    raw = {
        **MICRO,
        "data": {"source": "hh-rlhf", "path": str(fixture), "eval_size": 1, "test_size": 1,
                 "max_length": 40, "max_prompt_length": 20},
        "eval": {**MICRO["eval"], "judge": "reward-model"},
    }  # fmt: skip
    exp = parse_experiment(raw)
    assert n_train_pairs(exp) == rows - 1  # the eval pair is carved from the training rows
    lines = plan_lines(exp)
    assert lines[-1].startswith("GPU-hours <= ") and "estimate, not a measurement" in lines[-1]


def test_bench_rows_carry_model_flops_and_no_mfu_without_a_gpu():
    from orpo.bench import _row

    result = {"steps": 2, "forward_passes": 4, "tokens": 1000, "train_seconds": 2.0,
              "parameters": 1_000_000, "peak_rss_mb": 1.0}  # fmt: skip
    row = _row("m", "orpo", "zero3", 1, result)
    assert row["tokens_per_s"] == 500 and row["model_tflops"] == pytest.approx(6e6 * 500 / 1e12)
    assert row["mfu"] is None  # these machines have no GPU; no CPU peak is claimed
    assert row["peak_gpu_mb"] is None  # nothing measured, nothing claimed
    on_gpu = _row("m", "orpo", "zero3", 1, {**result, "peak_gpu_mb": 1234.5})
    assert on_gpu["peak_gpu_mb"] == 1234.5


def test_peak_gpu_memory_is_none_without_cuda():
    import torch

    from orpo.training.worker import peak_gpu_mb

    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")
        assert peak_gpu_mb() > 0
    else:
        assert peak_gpu_mb() is None


def test_cell_key_follows_a_local_model_folders_content_not_its_path(tmp_path):
    from orpo.training.job import cell_key

    def job_for(folder):
        return CellJob.model_validate(
            {
                "experiment": "e",
                "cell": {"id": "sft-m-s0", "stage": "sft", "model": "m", "seed": 0},
                "model": str(folder),
                "data_dir": str(tmp_path / "data"),
                "out_dir": str(tmp_path / "out"),
                "optim": {"lr": 1e-5, "epochs": 1},
            }
        )

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"hidden_size": 8}')
    assert cell_key(job_for(tmp_path / "a")) == cell_key(job_for(tmp_path / "b"))  # moved
    before = cell_key(job_for(tmp_path / "a"))
    (tmp_path / "a" / "config.json").write_text('{"hidden_size": 16}')  # overwritten in place
    assert cell_key(job_for(tmp_path / "a")) != before


def test_evaluation_runs_on_the_training_device_in_the_training_precision():
    from orpo.config import ResourcesConfig
    from orpo.training.engine import eval_placement

    gpu = eval_placement(ResourcesConfig(device="cuda"))  # chosen, not probed: no GPU needed
    assert gpu == (torch.device("cuda"), torch.bfloat16)
    assert eval_placement(ResourcesConfig(device="cpu")) == (torch.device("cpu"), torch.float32)
    forced = eval_placement(ResourcesConfig(device="cuda", precision="fp32"))
    assert forced == (torch.device("cuda"), torch.float32)


def test_a_cell_key_survives_the_job_file_round_trip(tmp_path, monkeypatch):
    """The worker recomputes the key from job.json: a value that reads back as another type
    (an int default of a float field comes back 86400.0) would retrain every cell next run."""
    from pathlib import Path

    from orpo.config import expand_cells
    from orpo.pipeline import make_job
    from orpo.training.job import CellJob, cell_key

    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    exp = parse_experiment(MICRO)
    data = tmp_path / "runs" / "micro" / "data"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text("{}\n")
    for cell in expand_cells(exp):
        job = make_job(exp, cell)
        if job.init_from:  # the checkpoint it starts from, as its upstream cell leaves it
            Path(job.init_from).mkdir(parents=True, exist_ok=True)
            (Path(job.init_from) / "config.json").write_text("{}")
        assert cell_key(CellJob.model_validate_json(job.model_dump_json())) == cell_key(job)
