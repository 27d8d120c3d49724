"""The training loop: a plain function over an engine (DeepSpeed or plain torch), an objective
and a batch schedule. No Trainer subclass; side effects go through the injected `sink` (metrics)
and `log` (progress lines)."""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orpo.timing import HeapTrim, peak_rss_mb, temporaries_on_heap
from orpo.training.batches import Schedule, StageData, shard_batches
from orpo.training.objectives import (
    OBJECTIVES,
    Norms,
    ObjectiveConfig,
    n_examples,
    nll_tokens,
    pair_logps,
)
from orpo.turns import StepTurns

PER_TOKEN_STATS = {"nll"}


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf: the cell stops, naming the step."""

    def __init__(self, step: int, value: float):
        super().__init__(f"non-finite loss {value} at optimizer step {step}; stopping the cell")
        self.step = step


@dataclass
class LoopConfig:
    total_steps: int
    batch_size: int
    grad_accum: int
    eval_every: int
    checkpoint_every: int
    seed: int
    ckpt_dir: Path | None  # None: no checkpoints (the benchmark)
    eval_batch_size: int = 16


@dataclass
class LoopState:
    step: int = 0
    best_eval_loss: float = math.inf
    best_step: int = 0
    forward_passes: int = 0
    eval_forward_passes: int = 0
    tokens: int = 0
    train_seconds: float = 0.0  # optimizer steps
    eval_seconds: float = 0.0  # the rest of the loop: evaluation, checkpoints, logging
    last_train_loss: float = math.nan
    resumed_from: int | None = None
    # each optimizer step of this attempt, for the benchmark's medians (not checkpointed)
    step_seconds: list[float] = field(default_factory=list)
    # peak RSS when the last optimizer step ended, before that step's evaluation and checkpoint
    # (earlier ones included): what training itself needs, comparable with the benchmark floor
    step_peak_rss_mb: float | None = None

    def client_state(self) -> dict:
        keys = (
            "step",
            "best_eval_loss",
            "best_step",
            "forward_passes",
            "eval_forward_passes",
            "tokens",
            "train_seconds",
            "eval_seconds",
            "last_train_loss",
        )
        return {k: getattr(self, k) for k in keys}


def _reduce(engine, stats: dict[str, float], extra: list[float]) -> tuple[dict, list[float]]:
    keys = sorted(stats)
    values = torch.tensor([stats[k] for k in keys] + extra, dtype=torch.float64)
    values = engine.all_reduce_sum(values)
    return dict(zip(keys, values[: len(keys)].tolist(), strict=True)), values[len(keys) :].tolist()


def _means(sums: dict[str, float], norms: Norms, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in sums.items():
        if key == "loss":
            out[f"{prefix}/loss"] = value
        else:
            out[f"{prefix}/{key}"] = value / (
                norms.tokens if key in PER_TOKEN_STATS else norms.examples
            )
    return out


def evaluate(
    engine, data: StageData, cfg: ObjectiveConfig, ref_eval, batch_size: int
) -> tuple[dict[str, float], int]:
    """Eval loss over the whole eval set (normalised over all of it) + its stats."""
    objective = OBJECTIVES[cfg.stage]
    batches = shard_batches(len(data.eval), batch_size, engine.rank, engine.world_size)
    collated = [(data.batch(data.eval, idx), w) for idx, w in batches]
    counts = (
        torch.tensor(
            [
                [nll_tokens(b, cfg.stage, cfg.nll_scope) * w, n_examples(b, cfg.stage) * w]
                for b, w in collated
            ]
        )
        .sum(0)
        .tolist()
    )
    _, (tokens, examples) = _reduce(engine, {}, counts)
    norms = Norms(tokens=max(tokens, 1.0), examples=max(examples, 1.0))
    sums: dict[str, float] = {}
    engine.train(False)
    with torch.no_grad():
        for batch, weight in collated:
            inputs, ref = on_device(batch, ref_eval, engine.device)
            _, stats = objective(engine.forward, inputs, norms, cfg, ref)
            if data.pair_collate is not None:  # one more pass: rejected log-probs under SFT
                pairs = data.pair_collate([data.eval[i] for i in batch["indices"].tolist()])
                _, mean_logps = pair_logps(
                    engine.forward, _to(pairs, engine.device), cfg.narrow_logits
                )  # (B, 2)
                stats["logp_chosen"], stats["logp_rejected"] = mean_logps.sum(0)
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + float(v) * weight
    engine.train(True)
    sums, _ = _reduce(engine, sums, [])
    passes = len(collated) * (2 if data.pair_collate is not None else 1)
    return _means(sums, norms, "eval"), passes


def _to(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def on_device(
    batch: dict[str, torch.Tensor], ref_all: torch.Tensor | None, device
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """A micro-batch and its rows of the cached reference log-probs, both on `device`.

    The reference cache lives on the CPU (built with `.cpu()`, or loaded from disk); indexing it
    per batch and handing it to the loss unmoved mixes devices on the first GPU step."""
    ref = ref_all[batch["indices"]].to(device) if ref_all is not None else None  # (B, 2)
    return _to(batch, device), ref


def run_loop(
    engine,
    data: StageData,
    obj_cfg: ObjectiveConfig,
    cfg: LoopConfig,
    sink,
    log: Callable[[str], None],
    ref_logps: dict | None = None,
    progress: Callable[[int, dict], None] | None = None,
    turns: StepTurns | None = None,
) -> LoopState:
    """Train for cfg.total_steps optimizer steps, resuming from the last checkpoint if any.
    With `turns` (`orpo bench --paired`), each step waits for this process's turn."""
    objective = OBJECTIVES[obj_cfg.stage]
    ref_train = ref_logps["train"] if ref_logps else None
    ref_eval = ref_logps["eval"] if ref_logps else None
    schedule = Schedule(
        len(data.train), cfg.batch_size, cfg.grad_accum, engine.world_size, cfg.seed
    )
    state = LoopState()
    if cfg.ckpt_dir is not None and (cfg.ckpt_dir / "latest").is_file():
        restored = engine.load(cfg.ckpt_dir)
        if restored:
            for key, value in restored.items():
                if hasattr(state, key):
                    setattr(state, key, value)
            state.resumed_from = state.step
            sink.on_resume(state.step)
            log(f"resumed from checkpoint at step {state.step}")
    if state.step == 0:
        # Where every method starts, so the dynamics plots show what training changed. Not a
        # candidate for the best checkpoint: a cell keeps weights it trained.
        t0 = time.perf_counter()
        eval_metrics, n_fwd = evaluate(engine, data, obj_cfg, ref_eval, cfg.eval_batch_size)
        state.eval_forward_passes += n_fwd * engine.world_size
        sink.log_metrics(0, eval_metrics)
        state.eval_seconds += time.perf_counter() - t0
    engine.train(True)
    trim_heap = HeapTrim()
    step_turn = turns.step if turns is not None else nullcontext
    while state.step < cfg.total_steps:
        with step_turn():  # alone: no-op; in `orpo bench --paired`: one process at a time
            t0 = time.perf_counter()
            step = state.step + 1  # 1-based, as logged
            micro_batches = [
                data.batch(data.train, idx) for idx in schedule.window(state.step, engine.rank)
            ]
            local = [
                sum(nll_tokens(b, obj_cfg.stage, obj_cfg.nll_scope) for b in micro_batches),
                sum(n_examples(b, obj_cfg.stage) for b in micro_batches),
                sum(int(b["attention_mask"].sum()) for b in micro_batches),
            ]
            _, (tokens, examples, seen_tokens) = _reduce(engine, {}, local)
            norms = Norms(tokens=max(tokens, 1.0), examples=max(examples, 1.0))
            sums: dict[str, float] = {}
            for i, batch in enumerate(micro_batches):
                inputs, ref = on_device(batch, ref_train, engine.device)
                loss, stats = objective(engine.forward, inputs, norms, obj_cfg, ref)
                engine.backward(loss)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                if i < len(micro_batches) - 1:
                    engine.step()
            sums, _ = _reduce(engine, sums, [])
            if not math.isfinite(sums["loss"]):  # same total on every rank: all stop together
                raise NonFiniteLoss(step, sums["loss"])
            lr = engine.lr()  # the rate this update uses (the scheduler advances inside step())
            with temporaries_on_heap():  # its temporaries recur at the same sizes each step
                engine.step()  # the boundary step applies the update only once the loss is finite
            trim_heap()  # freed activations and temporaries back to the OS before the next step
            if engine.device.type == "cuda":  # kernels run asynchronously: time the finished step
                torch.cuda.synchronize(engine.device)
            elapsed = time.perf_counter() - t0
            state.step_peak_rss_mb = peak_rss_mb()
            state.step = step
            state.forward_passes += len(micro_batches) * engine.world_size
            state.tokens += int(seen_tokens)
            state.train_seconds += elapsed
            state.step_seconds.append(elapsed)
            state.last_train_loss = sums["loss"]
            metrics = _means(sums, norms, "train")
            metrics.update(
                {
                    "train/lr": lr,
                    "train/grad_norm": engine.grad_norm(),
                    "train/tokens_per_s": seen_tokens / max(elapsed, 1e-9),
                }
            )
            if step % cfg.eval_every == 0 or step == cfg.total_steps:
                eval_metrics, n_fwd = evaluate(engine, data, obj_cfg, ref_eval, cfg.eval_batch_size)
                state.eval_forward_passes += n_fwd * engine.world_size
                metrics.update(eval_metrics)
                if eval_metrics["eval/loss"] < state.best_eval_loss:
                    state.best_eval_loss, state.best_step = eval_metrics["eval/loss"], step
                    if cfg.ckpt_dir is not None:  # the paper keeps the best checkpoint by eval loss
                        engine.save(cfg.ckpt_dir, "best", state.client_state(), latest=False)
            sink.log_metrics(step, metrics)  # before the checkpoint: a resume drops lines after it
            if cfg.ckpt_dir is not None and (
                step % cfg.checkpoint_every == 0 or step == cfg.total_steps
            ):
                _save_step_checkpoint(engine, cfg.ckpt_dir, state)
                sink.flush()  # buffered metrics up to the checkpoint survive a crash after it
            if progress is not None:
                progress(step, metrics)
            state.eval_seconds += time.perf_counter() - t0 - elapsed
    if turns is not None:
        turns.finish()  # paired: the export waits for the other engines' last steps
    sink.flush()
    return state


def _save_step_checkpoint(engine, ckpt_dir: Path, state: LoopState) -> None:
    tag = f"step{state.step}"
    engine.save(ckpt_dir, tag, state.client_state(), latest=True)
    engine.barrier()
    if engine.rank == 0:  # keep only the newest step checkpoint (and "best")
        for old in ckpt_dir.glob("step*"):
            if old.is_dir() and old.name != tag:
                shutil.rmtree(old, ignore_errors=True)
    engine.barrier()
