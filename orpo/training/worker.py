"""One rank of a training cell: `python -m orpo.training.worker JOB.json` (started by the launcher
through torchrun or the deepspeed launcher, once per process).

Reads the job, builds tokenizer, data and model, wraps them in the DeepSpeed engine, runs the
loop, consolidates the best checkpoint into a Hugging Face model folder and writes result.json.
Rank 0 alone talks to MLflow and writes files outside the checkpoint folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

from orpo.data.tokenize import chat_format
from orpo.methods import needs_reference
from orpo.models import (
    add_lora,
    build_model,
    count_parameters,
    is_preset,
    load_tokenizer,
    merge_lora,
    narrows_logits,
    save_model,
    trainable_parameters,
)
from orpo.timing import Phases, map_large_blocks, peak_rss_mb, startup_seconds
from orpo.tracking import JsonlSink, MlflowSink, NullSink, TeeSink, cell_totals
from orpo.training.batches import StageData, load_stage_data, shard_batches, total_steps
from orpo.training.engine import DeepSpeedEngine, pick_device
from orpo.training.job import CellJob, cell_key, hash_dir
from orpo.training.loop import LoopConfig, NonFiniteLoss, run_loop
from orpo.training.objectives import ObjectiveConfig, pair_logps
from orpo.turns import StepTurns

# torch deprecates the collectives DeepSpeed's ZeRO-3 calls on every step; without this filter
# each step adds two FutureWarning lines to the cell's log.
warnings.filterwarnings(
    "ignore",
    category=FutureWarning,
    message=r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
)


def objective_config(job: CellJob, narrow_logits: bool) -> ObjectiveConfig:
    """The objective's settings from the job; `narrow_logits` from `orpo.models.narrows_logits`
    of the model it trains."""
    return ObjectiveConfig(
        stage=job.cell.stage,
        nll_scope=job.nll_scope,
        orpo_lambda=job.cell.orpo_lambda,
        dpo_beta=job.cell.dpo_beta,
        params=dict(job.cell.params),
        narrow_logits=narrow_logits,
    )


def loop_config(job: CellJob, steps: int, ckpt_dir: Path | None) -> LoopConfig:
    """The loop's settings from the job; ckpt_dir None trains without checkpoints."""
    optim = job.optim
    return LoopConfig(
        total_steps=steps,
        batch_size=optim.batch_size,
        grad_accum=optim.grad_accum,
        eval_every=optim.eval_every,
        checkpoint_every=optim.checkpoint_every,
        seed=job.cell.seed,
        ckpt_dir=ckpt_dir,
    )


def resolve_tokenizer(job: CellJob):
    if job.init_from:  # checkpoints are saved with their tokenizer
        return load_tokenizer(job.init_from)
    if is_preset(job.model):  # presets use the tokenizer trained on the experiment's data
        return load_tokenizer(str(Path(job.data_dir) / "tokenizer"))
    return load_tokenizer(job.model, trust_remote_code=job.trust_remote_code)


def model_kind(job: CellJob) -> str:
    return "reward" if job.cell.stage == "rm" else "causal-lm"


REFERENCE_BATCH_SIZE = 16  # rows per reference pass; padding width changes the last bits


def reference_cache_key(job: CellJob, precision: str, device_type: str, world_size: int) -> str:
    """Everything that changes the reference log-probs' numbers: the reference checkpoint and
    the data (content hashes), the length limits, precision (bf16 vs fp32), device type (CUDA
    kernels differ from CPU ones), world size and batch size (padding and sharding), and the
    library versions that compute them."""
    import transformers

    payload = {
        "reference": hash_dir(job.init_from),
        "data": hash_dir(job.data_dir),
        "max_length": job.max_length,
        "max_prompt_length": job.max_prompt_length,
        "precision": precision,
        "device": device_type,
        "world_size": world_size,
        "batch_size": REFERENCE_BATCH_SIZE,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def reference_logps(
    engine, data: StageData, job: CellJob, log, narrow_logits: bool
) -> tuple[dict, bool]:
    """Reference log-probs (summed, chosen/rejected) of train and eval pairs, for the methods
    that need them (DPO, IPO: `orpo.methods`).

    They start from their reference (the SFT checkpoint), so before the first update the policy IS
    the reference: one pass under the same engine, no second model. Cached on disk per
    (reference checkpoint, data, lengths) and reused across dpo_beta values and epochs.
    Returns (logps, cache_hit)."""
    key = reference_cache_key(job, engine.precision, engine.device_type, engine.world_size)
    path = Path(job.ref_cache_dir or Path(job.out_dir) / "ref_cache") / f"ref-{key}.pt"
    if path.is_file():
        log(f"reference log-probs: cache hit {path.name}")
        return torch.load(path, weights_only=True), True
    engine.train(False)
    out = {}
    for split, items in (("train", data.train), ("eval", data.eval)):
        mine = {}
        for indices, weight in shard_batches(
            len(items), REFERENCE_BATCH_SIZE, engine.rank, engine.world_size
        ):
            summed, _ = pair_logps(
                engine.forward, _to(data.batch(items, indices), engine.device), narrow_logits
            )
            if weight:
                mine.update(zip(indices, summed.float().cpu(), strict=True))
        merged = {k: v for part in engine.all_gather_object(mine) for k, v in part.items()}
        out[split] = torch.stack([merged[i] for i in range(len(items))])  # (N, 2)
    engine.train(True)
    if engine.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    engine.barrier()
    log(f"reference log-probs: computed and cached {path.name}")
    return out, False


def _to(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _adapters(job: CellJob):
    """The model as the cell trains it: with LoRA adapters when the job asks for them."""
    return (lambda model: add_lora(model, job.lora)) if job.lora else (lambda model: model)


def peak_gpu_mb() -> float | None:
    """Peak memory torch allocated on this process's GPU (None without CUDA). The allocator's
    own cache and the CUDA context are not in it: nvidia-smi shows more."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def make_progress(total: int, rank: int, log):
    """tqdm bar on a terminal, else a plain line every ~5% of the steps."""
    if rank != 0:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc="train", unit="step")

        def update(step, metrics):
            bar.update(1)
            bar.set_postfix(
                loss=f"{metrics['train/loss']:.4f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}"
            )

        return update
    every = max(1, total // 20)

    def line(step, metrics):
        if step % every == 0 or step == total:
            extra = f" eval/loss={metrics['eval/loss']:.4f}" if "eval/loss" in metrics else ""
            log(
                f"step {step}/{total} loss={metrics['train/loss']:.4f}{extra} "
                f"tokens/s={metrics['train/tokens_per_s']:.0f}"
            )

    return line


def train(job: CellJob) -> dict:
    started = time.time()
    phases, load_started = Phases(), time.perf_counter()
    out = Path(job.out_dir)
    rank = int(os.environ.get("RANK", "0"))

    def log(message: str) -> None:
        if rank == 0:
            print(f"[{job.cell.id}] {message}", flush=True)

    tokenizer = resolve_tokenizer(job)
    data = load_stage_data(
        job.cell.stage, job.data_dir, tokenizer, job.max_length, job.max_prompt_length
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    optim = job.optim
    steps = total_steps(
        len(data.train), optim.epochs, optim.batch_size * optim.grad_accum * world, optim.max_steps
    )
    init = job.init_from or job.model
    kind = model_kind(job)
    model = build_model(
        init,
        tokenizer,
        kind=kind,
        seed=job.cell.seed,
        trust_remote_code=job.trust_remote_code,
        keep_dropout=job.keep_dropout,
    )
    n_params = count_parameters(model)  # before ZeRO-3 partitions the parameters
    obj_cfg = objective_config(job, narrows_logits(model))
    if job.lora is not None:
        model = add_lora(model, job.lora)
        log(
            f"LoRA r={job.lora.r} alpha={job.lora.alpha:g}: {trainable_parameters(model):,} of "
            f"{count_parameters(model):,} parameters train"
        )
    engine = DeepSpeedEngine(model, optim, job.resources, steps)
    log(
        f"{job.cell.stage} on {job.model}: {len(data.train)} train / {len(data.eval)} eval items, "
        f"{steps} steps, {world} process(es), ZeRO-{job.resources.zero_stage}, "
        f"{engine.precision} on {engine.device_type}, "
        f"dropout {'as in the checkpoint' if job.keep_dropout else 'off'}, "
        f"prompt format: {chat_format(tokenizer)}"
    )
    sink = NullSink()
    if rank == 0:
        sinks = [JsonlSink(out / "metrics.jsonl")]
        if job.mlflow_run_id:
            sinks.append(MlflowSink(job.mlflow_run_id, job.tracking_uri))
        sink = TeeSink(sinks)
    sink.log_params(job.training_params())
    phases.add("load_seconds", time.perf_counter() - load_started)
    ref, cache_hit = (None, None)
    ref_passes = 0
    if needs_reference(job.cell.stage):
        with phases("reference_seconds"):
            ref, cache_hit = reference_logps(engine, data, job, log, obj_cfg.narrow_logits)
        if not cache_hit:
            ref_passes = sum(
                len(shard_batches(len(items), REFERENCE_BATCH_SIZE, 0, world)) * world
                for items in (data.train, data.eval)
            )
    ckpt_dir = out / "checkpoints"
    loop_cfg = loop_config(job, steps, ckpt_dir)
    progress = make_progress(steps, rank, log)
    # set only by `orpo bench --paired` (one-process cells), which steps engines in turn
    turns = StepTurns.from_env()
    state = run_loop(engine, data, obj_cfg, loop_cfg, sink, log, ref, progress, turns)
    model_dir = out / "model"
    with_adapters = _adapters(job)
    with phases("export_seconds"):
        engine.export(
            ckpt_dir,
            "best",
            build_model=lambda: with_adapters(
                build_model(
                    init, tokenizer, kind=kind, seed=0, trust_remote_code=job.trust_remote_code
                )
            ),
            save=lambda m: save_model(merge_lora(m), tokenizer, model_dir),  # a plain checkpoint
        )
    rss = max(engine.all_gather_object(peak_rss_mb()))
    step_rss = [mb for mb in engine.all_gather_object(state.step_peak_rss_mb) if mb is not None]
    gpu = [mb for mb in engine.all_gather_object(peak_gpu_mb()) if mb is not None]
    result = {
        "cell_id": job.cell.id,
        "stage": job.cell.stage,
        "model": job.cell.model,
        "model_path": job.model,
        "chat_format": chat_format(tokenizer),
        "dropout": "checkpoint" if job.keep_dropout else "off",
        "orpo_lambda": job.cell.orpo_lambda,
        "dpo_beta": job.cell.dpo_beta,
        "seed": job.cell.seed,
        "key": cell_key(job),
        "status": "completed",
        "steps": state.step,
        "best_step": state.best_step,
        "best_eval_loss": state.best_eval_loss,
        "final_train_loss": state.last_train_loss,
        "resumed_from": state.resumed_from,
        "forward_passes": state.forward_passes + ref_passes,
        "reference_forward_passes": ref_passes,
        "eval_forward_passes": state.eval_forward_passes,
        "tokens": state.tokens,
        "train_seconds": state.train_seconds,
        "step_seconds": state.step_seconds,  # this attempt's steps, rank 0's clock
        "wall_seconds": time.time() - started,
        # orpo.timing's phases; a resumed cell's steps and evaluation count over its attempts
        "startup_seconds": startup_seconds(started),
        "reference_seconds": None,  # a method without a reference has no such phase
        "eval_seconds": state.eval_seconds,
        **phases.seconds,  # load, reference and export seconds
        "peak_rss_mb": rss,
        # by the end of the last optimizer step: no final checkpoint or export; None when
        # this attempt ran no step (resumed at the end)
        "step_peak_rss_mb": max(step_rss) if step_rss else None,
        "peak_gpu_mb": max(gpu) if gpu else None,  # the largest rank's; None on CPU
        "used_reference_cache": cache_hit,
        "world_size": world,
        "zero_stage": job.resources.zero_stage,
        "precision": engine.precision,
        "parameters": n_params,
        "truncation": {k: vars(v) for k, v in data.truncation.items()},
        "model_dir": str(model_dir),
    }
    if rank == 0:
        _write_outputs(out, engine.config, result, sink)
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # consolidated: the model folder is the output
    engine.barrier()
    return result


def _write_outputs(out: Path, ds_config: dict, result: dict, sink) -> None:
    (out / "ds_config.json").write_text(json.dumps(ds_config, indent=2))
    totals = cell_totals(result)
    sink.log_metrics(result["steps"], totals)
    sink.flush()
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out / "result.json")  # written last: its presence means the cell is done
    for name in ("job.json", "result.json", "ds_config.json"):
        if (out / name).is_file():
            sink.log_artifact(out / name)


def tune_heap(job: CellJob) -> None:
    """First thing in every process that trains on the CPU (a cell's worker, the bench's floor
    and its TRL runs alike, so they differ only in code): `map_large_blocks`, before the model
    exists. GPU processes keep glibc's default (not measured there)."""
    if pick_device(job.resources) == "cpu":
        map_large_blocks()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m orpo.training.worker JOB.json", file=sys.stderr)
        return 2
    job = CellJob.read(args[0])
    tune_heap(job)
    # "[cell] FAILED: ..." is the line the launcher quotes in CellFailed (torchrun's own
    # ChildFailedError report names no cause).
    try:
        train(job)
    except NonFiniteLoss as err:
        print(f"[{job.cell.id}] FAILED: {err}", file=sys.stderr, flush=True)
        return 3
    except Exception as err:
        traceback.print_exc()
        print(f"[{job.cell.id}] FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
