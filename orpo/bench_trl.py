"""`orpo bench --against trl`: TRL's ORPOTrainer and DPOTrainer as the outside anchor.

Each TRL cell runs in a fresh spawned interpreter, like the plain-torch floor, on exactly what
the floor trains, at its precision (fp32 on CPU, bf16 mixed precision on a GPU): the model
`build_model` builds for the job (dropout off, the same seed), the job's training rows, prompts
rendered by `format_prompt` and cut to `max_prompt_length` as ours are, the same global batch,
max_length, learning rate, weight decay, clipping, schedule and torch's AdamW, no activation
recomputation, the same thread count. DPO starts from the same SFT model and, like ours, reads
reference log-probs computed once before training (TRL's `precompute_ref_log_probs`), so a step
is the policy's passes only.

What TRL does differently stays as TRL does it (its own tokenisation of the text, its padding),
so rows report the tokens TRL actually fed the model: the attention-mask sum of every batch its
collator built, as ours count them. A step is timed from TRL's `on_step_begin` to `on_step_end`
(the collation of the batch is outside; ours is inside). TRL is an optional dependency:
`pip install -e '.[bench]'`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

TRL_METHODS = ("dpo", "orpo")  # the trainers TRL has for the paper's preference methods


def trl_version() -> str | None:
    try:
        import trl
    except ImportError:
        return None
    return trl.__version__


def require_trl() -> str:
    """TRL's version, or a clear error before anything is measured."""
    version = trl_version()
    if version is None:
        raise SystemExit(
            "orpo bench --against trl needs TRL, which is not a core dependency: "
            "pip install -e '.[bench]'"
        )
    return version


def trl_rows(tokenizer, data_dir: str, max_prompt_length: int) -> list[dict[str, str]]:
    """The job's training pairs as TRL's text columns, the prompt rendered and cut as ours: TRL
    1.16 has no prompt limit of its own, and given a whole chat-template prompt it kept up to
    max_length of it and cut the responses instead."""
    from orpo.data.schema import read_jsonl
    from orpo.data.tokenize import prompt_text_within

    return [
        {
            "prompt": prompt_text_within(tokenizer, ex.prompt, max_prompt_length),
            "chosen": ex.chosen,
            "rejected": ex.rejected,
        }
        for ex in read_jsonl(Path(data_dir) / "train.jsonl")
    ]


class _CountingCollator:
    """TRL's collator, counting the real (unpadded) tokens of each batch it builds, in order.
    The trainer's data loader collates ahead of the step that uses a batch, so a run builds
    more batches than it trains on: `tokens(n)` sums the first n."""

    def __init__(self, inner):
        self.inner, self.per_batch = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        masks = [v for k, v in batch.items() if k.endswith("attention_mask") and "prompt" not in k]
        self.per_batch.append(int(sum(int(m.sum()) for m in masks)))
        return batch

    def tokens(self, n_batches: int) -> int:
        return sum(self.per_batch[:n_batches])


def trl_config(method: str, job, steps: int, out_dir: str):
    """TRL's ORPOConfig or DPOConfig with our job's settings; what TRL defaults differently is
    set explicitly, so that a step is the same work as ours."""
    from orpo.training.engine import pick_device, pick_precision

    optim = job.optim
    device = pick_device(job.resources)
    common = dict(
        output_dir=out_dir,
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        max_grad_norm=optim.max_grad_norm,
        warmup_steps=int(round(steps * optim.warmup_ratio)),  # as warmup_cosine rounds it
        lr_scheduler_type="cosine",
        optim="adamw_torch_fused",  # torch's fused AdamW, as our engines use (and TRL's default)
        # TRL's configs default to recomputing activations in the backward pass (TRL 1.16);
        # ours keep them, and a like-for-like step must too
        gradient_checkpointing=False,
        max_steps=steps,
        max_length=job.max_length,
        use_cpu=device == "cpu",
        # the floor's precision: fp32 on CPU (TRL's configs default to bf16), bf16 on a GPU
        bf16=pick_precision(job.resources, device) == "bf16",
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=job.cell.seed,
    )
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(beta=job.cell.orpo_lambda, **common)  # TRL's beta is ORPO's lambda
    from trl import DPOConfig

    return DPOConfig(
        beta=job.cell.dpo_beta,
        precompute_ref_log_probs=True,  # ours caches the reference's log-probs too
        pad_to_multiple_of=None,  # pad to the longest row, as ours does
        **common,
    )


def _trainer(method: str, job, model, tokenizer, rows: list[dict], steps: int, out_dir: str):
    from datasets import Dataset

    args = trl_config(method, job, steps, out_dir)
    data = Dataset.from_list(rows)
    if method == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    from trl import DPOTrainer

    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)


def _trl_child(job_json: str, method: str, threads: int, turns: str | None, queue) -> None:
    try:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        import torch
        from transformers import TrainerCallback
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()
        from orpo.models import build_model, count_parameters
        from orpo.timing import peak_rss_mb
        from orpo.training.batches import total_steps
        from orpo.training.job import CellJob
        from orpo.training.worker import model_kind, peak_gpu_mb, resolve_tokenizer, tune_heap
        from orpo.turns import StepTurns

        started = time.time()
        job = CellJob.model_validate_json(job_json)
        tune_heap(job)
        tokenizer = resolve_tokenizer(job)
        model = build_model(
            job.init_from or job.model, tokenizer, kind=model_kind(job), seed=job.cell.seed
        )
        optim = job.optim
        rows = trl_rows(tokenizer, job.data_dir, job.max_prompt_length)
        steps = total_steps(
            len(rows), optim.epochs, optim.batch_size * optim.grad_accum, optim.max_steps
        )

        in_turn = StepTurns.from_spec(turns)  # `orpo bench --paired`

        class StepTimer(TrainerCallback):
            def __init__(self):
                self.steps, self.rss, self.t0 = 0, None, 0.0
                self.each: list[float] = []  # seconds of each step

            def on_step_begin(self, args, state, control, **kwargs):
                if in_turn is not None:
                    in_turn.begin_step()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                if torch.cuda.is_available():  # as our loop: the step's kernels finished
                    torch.cuda.synchronize()
                self.each.append(time.perf_counter() - self.t0)
                self.steps += 1
                self.rss = peak_rss_mb()
                if in_turn is not None:
                    in_turn.end_step()

            def on_train_end(self, args, state, control, **kwargs):
                if in_turn is not None:
                    in_turn.finish()

        timer = StepTimer()
        with tempfile.TemporaryDirectory(prefix="orpo-bench-trl-") as out_dir:
            trainer = _trainer(method, job, model, tokenizer, rows, steps, out_dir)
            counter = _CountingCollator(trainer.data_collator)
            trainer.data_collator = counter  # set after the reference pass: steps' tokens only
            trainer.add_callback(timer)
            trainer.train()
        queue.put(
            {
                "steps": timer.steps,
                "train_seconds": sum(timer.each),
                "step_seconds": timer.each,
                "tokens": counter.tokens(timer.steps * optim.grad_accum),
                "forward_passes": timer.steps * optim.grad_accum,
                "reference_forward_passes": 0,  # TRL's precompute pass is not counted
                "peak_rss_mb": peak_rss_mb(),
                "step_peak_rss_mb": timer.rss,
                "peak_gpu_mb": peak_gpu_mb(),
                "parameters": count_parameters(model),
                "wall_seconds": time.time() - started,
            }
        )
    except Exception as err:  # reported by the parent, which carries on with other cells
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_trl(job, method: str, threads: int, turns: str | None = None) -> dict:
    """One TRL cell in a fresh interpreter; the same result keys as the floor's. With `turns`
    (a TURNS_ENV value), its steps take turns with the other engines'."""
    from orpo.bench import run_spawned

    return run_spawned(_trl_child, job.model_dump_json(), method, threads, turns)
