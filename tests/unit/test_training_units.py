"""Training plumbing without processes: LR schedule, batch schedule, eval sharding, the DeepSpeed
config we generate, the cell cache key, the launch command and how launch failures are reported."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from pydantic import ValidationError

from orpo.config import Cell, OptimConfig, ResourcesConfig
from orpo.training import launch
from orpo.training.batches import Schedule, shard_batches, total_steps
from orpo.training.engine import (
    ONE_PROCESS_BUCKET,
    deepspeed_config,
    flatten_adjacent_views,
    warmup_cosine,
)
from orpo.training.job import CellJob, cell_key
from orpo.training.launch import CellFailed, launch_command, run_cell

pytestmark = pytest.mark.unit


# --- warmup_cosine -------------------------------------------------------------------------------


def test_warmup_cosine_values():
    # 10 steps, warmup_ratio 0.2 -> 2 warmup steps: 1/3, 2/3, then cosine from 1 down to 0
    f = warmup_cosine(10, 0.2)
    assert f(0) == pytest.approx(1 / 3)
    assert f(1) == pytest.approx(2 / 3)
    assert f(2) == pytest.approx(1.0)  # peak right after warmup
    assert f(6) == pytest.approx(0.5)  # half-way through the 8 decay steps: (1 + cos(pi/2)) / 2
    assert f(4) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert f(10) == pytest.approx(0.0)
    assert f(12) == pytest.approx(0.0)  # clamped past the end, never rising again


def test_warmup_cosine_without_warmup_starts_at_peak():
    f = warmup_cosine(4, 0.1)  # round(0.4) = 0 warmup steps
    assert [f(s) for s in range(5)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]
    )


def test_warmup_cosine_is_monotone_up_then_down():
    f = warmup_cosine(100, 0.1)
    values = [f(s) for s in range(101)]
    peak = values.index(max(values))
    assert peak == 10
    assert all(a < b for a, b in zip(values[:peak], values[1 : peak + 1], strict=True))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))


# --- Schedule ------------------------------------------------------------------------------------


def _global_batch(schedule: Schedule, step: int) -> list[int]:
    """Every example of optimizer step `step`, over all ranks and micro-batches."""
    return [i for r in range(schedule.world_size) for mb in schedule.window(step, r) for i in mb]


def test_schedule_is_deterministic_and_seeded():
    a, b = Schedule(50, 4, 2, 2, seed=3), Schedule(50, 4, 2, 2, seed=3)
    assert [a.window(s, r) for s in range(20) for r in range(2)] == [
        b.window(s, r) for s in range(20) for r in range(2)
    ]
    assert _global_batch(Schedule(50, 4, 2, 2, seed=4), 0) != _global_batch(a, 0)
    # a fresh object asked for a late step first (a resumed cell) sees the same batch
    assert Schedule(50, 4, 2, 2, seed=3).window(17, 1) == a.window(17, 1)


def test_schedule_windows_have_the_configured_shape():
    s = Schedule(50, batch_size=3, grad_accum=4, world_size=2, seed=0)
    for rank in range(2):
        window = s.window(5, rank)
        assert len(window) == 4 and all(len(mb) == 3 for mb in window)


@pytest.mark.parametrize("n", [48, 50])
def test_schedule_same_global_batch_for_equal_global_size(n):
    """(batch, accumulation, world) with equal products see the same examples per step, so 1
    and N processes, and accumulated or not, train on the same data."""
    layouts = [(8, 1, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (1, 8, 1), (1, 4, 2), (2, 1, 4)]
    reference = Schedule(n, 8, 1, 1, seed=7)
    for b, ga, w in layouts:
        s = Schedule(n, b, ga, w, seed=7)
        for step in range(15):  # crosses epoch boundaries (6.25 steps per epoch for n=50)
            expected = sorted(_global_batch(reference, step))
            assert sorted(_global_batch(s, step)) == expected, (b, ga, w, step)


def test_schedule_partitions_an_epoch_across_ranks_and_steps():
    """Within a step no example is on two ranks; one epoch (n divisible) covers each example
    exactly once."""
    n, b, ga, w = 48, 2, 3, 2  # global batch 12 -> 4 steps per epoch
    s = Schedule(n, b, ga, w, seed=1)
    for step in range(4):
        per_rank = [{i for mb in s.window(step, r) for i in mb} for r in range(w)]
        assert not per_rank[0] & per_rank[1]
    epoch = [i for step in range(4) for i in _global_batch(s, step)]
    assert sorted(epoch) == list(range(n))
    second = [i for step in range(4, 8) for i in _global_batch(s, step)]
    assert sorted(second) == list(range(n)) and second != epoch  # reshuffled per epoch


def test_total_steps():
    assert total_steps(64, 1, 8, None) == 8
    assert total_steps(65, 1, 8, None) == 9
    assert total_steps(64, 2.5, 8, None) == 20
    assert total_steps(64, 1, 8, 4) == 4
    assert total_steps(3, 1, 8, None) == 1


# --- shard_batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 16, 17, 33])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_shard_batches_equal_counts_and_exact_cover(n, world, batch_size):
    shards = [shard_batches(n, batch_size, r, world) for r in range(world)]
    # ZeRO-3 forward passes are collective: every rank must run the same number of batches
    assert len({len(s) for s in shards}) == 1
    counted = sorted(i for s in shards for idx, w in s if w for i in idx)
    assert counted == list(range(n))  # every example once with weight 1
    for s in shards:
        for idx, w in s:
            assert w in (0.0, 1.0) and idx and len(idx) <= batch_size
            assert all(0 <= i < n for i in idx)


# --- deepspeed_config ----------------------------------------------------------------------------


def test_deepspeed_config_comes_from_validated_fields():
    optim = OptimConfig(lr=1e-4, epochs=1, batch_size=4, grad_accum=3, max_grad_norm=0.5)
    resources = ResourcesConfig(zero_stage=2)
    cfg = deepspeed_config(optim, resources, world_size=2, precision="bf16", device="cuda")
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert cfg["train_batch_size"] == 4 * 3 * 2  # DeepSpeed checks this product
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["zero_allow_untested_optimizer"] is True  # torch AdamW, no CPU-Adam compile
    json.dumps(cfg)  # written as ds_config.json

    cfg = deepspeed_config(optim, ResourcesConfig(), world_size=1, precision="fp32", device="cpu")
    assert cfg["zero_optimization"]["stage"] == 3  # the default
    assert cfg["bf16"] == {"enabled": False}
    assert cfg["train_batch_size"] == 12


def test_zero3_tuning_depends_on_world_size_and_device():
    optim = OptimConfig(lr=1e-4, epochs=1)
    zero3 = ResourcesConfig(zero_stage=3)

    def zero(world_size: int, device: str) -> dict:
        cfg = deepspeed_config(optim, zero3, world_size, "fp32", n_params=50_000_000, device=device)
        return cfg["zero_optimization"]

    one_cpu = zero(1, "cpu")
    assert one_cpu["stage3_param_persistence_threshold"] == 50_000_000  # every parameter resident
    assert one_cpu["memory_efficient_linear"] is False  # nothing to re-gather
    assert one_cpu["reduce_scatter"] is False  # one in-place all-reduce of the bucket
    # a small bucket kept for the whole run, whatever the model's size
    assert one_cpu["reduce_bucket_size"] == ONE_PROCESS_BUCKET < 50_000_000
    assert one_cpu["sub_group_size"] == 1_000_000  # cache-sized optimizer steps on a CPU
    two_cpu = zero(2, "cpu")
    assert "stage3_param_persistence_threshold" not in two_cpu  # partitioned: defaults
    assert "memory_efficient_linear" not in two_cpu
    assert "reduce_scatter" not in two_cpu  # several ranks: each reduces only its partition
    assert two_cpu["sub_group_size"] == 1_000_000
    assert "sub_group_size" not in zero(1, "cuda")  # GPUs keep DeepSpeed's large sub-groups
    stage2 = deepspeed_config(optim, ResourcesConfig(zero_stage=2), 1, "fp32", 10, device="cpu")
    assert stage2["zero_optimization"] == {
        "stage": 2,
        "stage3_gather_16bit_weights_on_model_save": True,
    }


def test_misspelt_or_invalid_fields_never_reach_deepspeed():
    with pytest.raises(ValidationError, match="extra"):
        OptimConfig(lr=1e-4, epochs=1, gradient_acumulation=2)
    with pytest.raises(ValidationError):
        ResourcesConfig(zero_stage=4)
    with pytest.raises(ValidationError):
        OptimConfig(lr=1e-4, epochs=1, batch_size=0)


# --- cell_key ------------------------------------------------------------------------------------


@pytest.fixture()
def job_dirs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text('{"id": "a"}\n')
    init = tmp_path / "sft" / "model"
    init.mkdir(parents=True)
    (init / "model.safetensors").write_bytes(b"weights-v1")
    (init / "config.json").write_text("{}")
    return data, init


def _job(data, init, **update) -> CellJob:
    job = CellJob(
        experiment="x",
        model="opt-tiny",
        init_from=str(init),
        data_dir=str(data),
        out_dir=str(data.parent / "cells" / "dpo"),
        cell=Cell(id="dpo-opt-tiny-b0.1-s0", stage="dpo", model="opt-tiny", seed=0, dpo_beta=0.1),
        optim=OptimConfig(lr=1e-3, epochs=1),
    )
    return job.model_copy(update=update)


def test_cell_key_follows_hyper_parameters_and_inputs(job_dirs, tmp_path):
    data, init = job_dirs
    base = _job(data, init)
    key = cell_key(base)
    assert cell_key(_job(data, init)) == key  # deterministic

    # a hyper-parameter changes the key
    assert cell_key(_job(data, init, optim=base.optim.model_copy(update={"lr": 2e-3}))) != key
    assert cell_key(_job(data, init, cell=base.cell.model_copy(update={"dpo_beta": 0.5}))) != key
    assert cell_key(_job(data, init, resources=ResourcesConfig(zero_stage=2))) != key
    assert cell_key(_job(data, init, nll_scope="full")) != key
    # so does the optimizer implementation the engines step with
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("orpo.training.job.OPTIMIZER", "torch.optim.AdamW(fused=False)")
        assert cell_key(base) != key

    # where the cell is written, and how it is scheduled, do not
    assert cell_key(_job(data, init, out_dir=str(tmp_path / "elsewhere"))) == key
    assert cell_key(_job(data, init, mlflow_run_id="abc", tracking_uri="sqlite:///x.db")) == key
    assert (
        cell_key(
            _job(
                data,
                init,
                resources=ResourcesConfig(max_parallel_cells=4, retries=3, threads_per_proc=1),
            )
        )
        == key
    )

    # the init checkpoint counts by content, not by path
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in init.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    assert cell_key(_job(data, moved)) == key
    (init / "model.safetensors").write_bytes(b"weights-v2")  # the SFT cell was retrained
    assert cell_key(_job(data, init)) != key

    # and so does the data
    (init / "model.safetensors").write_bytes(b"weights-v1")
    assert cell_key(_job(data, init)) == key
    (data / "train.jsonl").write_text('{"id": "b"}\n')
    assert cell_key(_job(data, init)) != key


# --- launching -----------------------------------------------------------------------------------


def test_launch_command_torchrun(tmp_path):
    job_path = tmp_path / "job.json"
    cmd = launch_command(job_path, procs=2, hostfile=None, port=29777)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[cmd.index("--master_port") + 1] == "29777"
    assert cmd[cmd.index("--master_addr") + 1] == "127.0.0.1"
    assert cmd[-3:] == ["-m", "orpo.training.worker", str(job_path)]


def test_one_local_process_runs_the_worker_itself(tmp_path):
    job_path = tmp_path / "job.json"
    assert launch_command(job_path, procs=1, hostfile=None, port=29777) == [
        sys.executable, "-m", "orpo.training.worker", str(job_path)
    ]  # fmt: skip
    env = launch.single_process_env(29777)
    assert (env["RANK"], env["WORLD_SIZE"], env["MASTER_PORT"]) == ("0", "1", "29777")
    # a hostfile keeps the deepspeed launcher even for one process per host
    assert launch_command(job_path, procs=1, hostfile="/h", port=1)[0] == "deepspeed"


def test_launch_command_hostfile(tmp_path):
    job_path = tmp_path / "job.json"
    cmd = launch_command(job_path, procs=4, hostfile="/etc/hosts.ds", port=29801)
    assert cmd[0] == "deepspeed"
    assert cmd[cmd.index("--hostfile") + 1] == "/etc/hosts.ds"
    assert cmd[cmd.index("--num_gpus") + 1] == "4"
    assert cmd[cmd.index("--master_port") + 1] == "29801"
    assert cmd[-3:] == ["--module", "orpo.training.worker", str(job_path)]


def test_free_ports_differ():
    assert len({launch.free_port() for _ in range(5)}) > 1


_FAKE_FAILING_RUN = r"""
import sys
print("[c] sft on opt-tiny: 64 train / 16 eval items")
print("Gathering sharded weights: 100%|##########| 68/68")
print("[c] FAILED: non-finite loss nan at optimizer step 3; stopping the cell", file=sys.stderr)
print("E1122 12:00:00 api.py:1002] failed (exitcode: 3) local_rank: 0 (pid: 1) of binary: py")
for i in range(40):
    print(f"  torchrun traceback line {i}")
print("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:")
print("orpo.training.worker FAILED")
sys.exit(1)
"""


def test_run_cell_reports_the_workers_error_not_torchruns(tmp_path, monkeypatch, job_dirs):
    data, init = job_dirs
    job = _job(data, init, out_dir=str(tmp_path / "cell"))
    monkeypatch.setattr(
        launch, "launch_command", lambda *a, **k: [sys.executable, "-c", _FAKE_FAILING_RUN]
    )
    lines: list[str] = []
    with pytest.raises(CellFailed) as err:
        run_cell(job, on_line=lines.append)
    first = str(err.value).splitlines()[0]
    assert first == (
        "cell dpo-opt-tiny-b0.1-s0 exited with code 1: [c] FAILED: non-finite loss "
        "nan at optimizer step 3; stopping the cell"
    )
    assert "torchrun traceback" not in str(err.value)  # the tail holds the worker's lines
    assert lines[0].startswith("launch: ")
    forwarded = "\n".join(lines[1:])
    assert "[c] sft on opt-tiny" in forwarded and "FAILED: non-finite" in forwarded
    assert "Gathering sharded weights" not in forwarded
    assert "torchrun traceback" not in forwarded and "ChildFailedError" not in forwarded
    log = (tmp_path / "cell" / "train.log").read_text()
    assert "ChildFailedError" in log and "torchrun traceback line 39" in log  # all of it kept


def test_the_floor_trains_at_the_precision_a_deepspeed_cell_would():
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from orpo.training.engine import TorchEngine

    config = OPTConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                       num_attention_heads=2, max_position_embeddings=16, word_embed_proj_dim=16)  # fmt: skip
    ids = torch.tensor([[1, 2, 3, 4]])
    for precision, dtype in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        engine = TorchEngine(OPTForCausalLM(config), OptimConfig(lr=1e-3, epochs=1),
                             ResourcesConfig(device="cpu", precision=precision), total_steps=1)  # fmt: skip
        assert engine.precision == {"auto": "fp32", "bf16": "bf16"}[precision]
        logits = engine.forward(input_ids=ids).logits
        assert logits.dtype == dtype  # bf16: the products ran under autocast
        assert next(engine.module.parameters()).dtype == torch.float32  # fp32 weights kept


def test_the_cell_key_names_the_optimizer_the_engines_build():
    import torch

    from orpo.training.engine import adamw
    from orpo.training.job import OPTIMIZER

    optimizer = adamw(torch.nn.Linear(2, 2), OptimConfig(lr=1e-3, epochs=1))
    assert type(optimizer) is torch.optim.AdamW
    assert OPTIMIZER == f"torch.optim.AdamW(fused={optimizer.defaults['fused']})"


def test_flatten_adjacent_views_is_a_view_only_of_views_lying_end_to_end():
    buffer = torch.arange(10.0)
    parts = [buffer.narrow(0, 0, 3), buffer.narrow(0, 3, 4), buffer.narrow(0, 7, 2)]
    flat = flatten_adjacent_views(parts)
    assert torch.equal(flat, buffer[:9]) and flat.data_ptr() == buffer.data_ptr()
    flat.mul_(2)  # a view: the step's in-place clipping reaches the buffer
    assert torch.equal(buffer[:9], torch.arange(9.0) * 2)
    for apart in (
        [buffer.narrow(0, 0, 3), buffer.narrow(0, 4, 2)],  # a gap
        [buffer.narrow(0, 3, 2), buffer.narrow(0, 0, 3)],  # out of order
        [buffer[:3], torch.ones(2)],  # another storage
        [buffer.view(2, 5)[:, :2]],  # not contiguous
    ):
        copy = flatten_adjacent_views(apart)
        assert torch.equal(copy, torch.cat([t.reshape(-1) for t in apart]))
        assert copy.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
