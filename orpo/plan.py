"""`orpo plan`: the models an experiment uses, the cells it expands to, and a rough cost estimate
per cell (the data section is `orpo.data.counts`).

The estimate is an upper bound in tokens (every row padded to data.max_length) and counts
forward passes as the report's compute section does: SFT and ORPO one pass per micro-batch (ORPO's
holds chosen and rejected together), DPO one policy pass per micro-batch plus one reference pass
over the data, computed once and cached.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from orpo.config import Cell, Experiment, expand_cells, optim_for
from orpo.data.counts import trained_model_names
from orpo.methods import needs_reference


@dataclass(frozen=True)
class CellCost:
    steps: int | None  # None when the data size is unknown before loading (hub data, no limit)
    forward_passes: int | None
    max_tokens: int | None


# Training pairs of the paper's hub data sets (before cleaning), for estimates before download.
KNOWN_SIZES = {"Anthropic/hh-rlhf": 160_800, "HuggingFaceH4/ultrafeedback_binarized": 61_135}


def count_rows(path: str) -> int | None:
    """Rows of a local json/jsonl/parquet file (before cleaning), without parsing them all;
    None for a hub id (counted when the data are prepared)."""
    file = Path(path).expanduser()
    if not file.is_file():
        return None
    if file.suffix == ".jsonl":
        with file.open("rb") as f:
            return sum(1 for line in f if line.strip())
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    if file.suffix == ".json":
        rows = json.loads(file.read_text())
        return len(rows) if isinstance(rows, list) else None
    return None


def n_train_pairs(exp: Experiment) -> int | None:
    if exp.data.source == "synthetic":
        return exp.data.synthetic.n_train
    known = KNOWN_SIZES.get(exp.data.path or "") or count_rows(exp.data.path or "")
    if known is not None:
        known -= exp.data.eval_size
    if exp.data.limit is not None:
        return min(exp.data.limit, known) if known else exp.data.limit
    return known


def estimate_cost(exp: Experiment, cell: Cell) -> CellCost:
    pairs = n_train_pairs(exp)
    if pairs is None:
        return CellCost(None, None, None)
    optim = optim_for(exp, cell.stage)
    # pretraining reads chosen and rejected as two separate texts
    examples = 2 * pairs if cell.stage == "pretrain" else pairs
    per_step = optim.batch_size * optim.grad_accum * exp.resources.procs_per_cell
    steps = math.ceil(examples * optim.epochs / per_step)
    if optim.max_steps is not None:
        steps = min(steps, optim.max_steps)
    micro_batches = steps * optim.grad_accum * exp.resources.procs_per_cell
    rows_per_micro = optim.batch_size * (1 if cell.stage in ("sft", "pretrain") else 2)
    forward = micro_batches
    rows = micro_batches * rows_per_micro
    if needs_reference(cell.stage):
        ref_batches = math.ceil(pairs / optim.batch_size)
        forward += ref_batches  # reference log-probs, once, cached on disk
        rows += ref_batches * rows_per_micro
    return CellCost(steps, forward, rows * exp.data.max_length)


def _knob(cell: Cell) -> str:
    if cell.orpo_lambda is not None:
        return f"orpo_lambda={cell.orpo_lambda:g}"
    if cell.dpo_beta is not None:
        return f"dpo_beta={cell.dpo_beta:g}"
    if cell.params:  # SimPO, CPO, IPO: their section's loss settings, by their YAML names
        return ",".join(f"{k}={v:g}" for k, v in cell.params.items())
    return "-"


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def model_lines(exp: Experiment) -> list[str]:
    """Each model of the grid: short name, architecture, parameter count and where it comes from."""
    from orpo.sources import describe

    lines = [f"{'model':<24} {'architecture':<34} {'parameters':>10}  source"]
    for name in trained_model_names(exp):
        info = describe(exp.model_path(name), exp.data.tokenizer_vocab_size)
        lines.append(
            f"{name:<24} {info['architecture'] or '? (' + info['kind'] + ')':<34} "
            f"{_human(info['parameters']):>10}  {info['source']} [{info['kind']}]"
            + (" LoRA" if exp.finetuning(name) == "lora" else "")
        )
    return lines


def plan_lines(exp: Experiment) -> list[str]:
    cells = expand_cells(exp)
    header = f"{'cell':<34} {'stage':<8} {'model':<20} {'knob':<18} {'seed':>4} "
    header += f"{'steps':>6} {'fwd':>7} {'tokens<=':>9}  depends on"
    lines = [header]
    totals = [0, 0, 0]
    for cell in cells:
        cost = estimate_cost(exp, cell)
        for i, v in enumerate((cost.steps, cost.forward_passes, cost.max_tokens)):
            totals[i] = None if v is None or totals[i] is None else totals[i] + v
        lines.append(
            f"{cell.id:<34} {cell.stage:<8} {cell.model:<20} {_knob(cell):<18} {cell.seed:>4} "
            f"{_human(cost.steps):>6} {_human(cost.forward_passes):>7} "
            f"{_human(cost.max_tokens):>9}  {', '.join(cell.depends_on) or '-'}"
        )
    lines.append(
        f"{len(cells)} cells; total {_human(totals[0])} optimizer steps, "
        f"{_human(totals[1])} forward passes, <= {_human(totals[2])} tokens"
    )
    hours = gpu_hours(exp, cells)
    if hours is not None:
        lines.append(
            f"GPU-hours <= {hours:.2g} (6 x parameters x tokens at {ASSUMED_MFU:.0%} of an "
            f"H100's {H100_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16 peak; an estimate, not a measurement)"
        )
    return lines


H100_BF16_FLOPS = 989e12  # dense bf16 peak of an H100 SXM (NVIDIA's datasheet)
ASSUMED_MFU = 0.4  # model FLOP utilisation a tuned ZeRO-3 run reaches; not measured here
PAPER_SIZES = {"opt-125m": 125e6, "opt-350m": 331e6, "opt-1.3b": 1.3e9}


def gpu_hours(exp: Experiment, cells: list[Cell]) -> float | None:
    """Upper bound of the grid's training compute in H100-hours (forward + backward = 6 N per
    token, every row padded to max_length); None when a size or the data size is unknown."""
    from orpo.sources import describe

    params: dict[str, float | None] = {}
    for name in {c.model for c in cells}:
        path = exp.model_path(name)
        params[name] = (
            PAPER_SIZES.get(path) or describe(path, exp.data.tokenizer_vocab_size)["parameters"]
        )
    flops = 0.0
    for cell in cells:
        tokens = estimate_cost(exp, cell).max_tokens
        if tokens is None or params[cell.model] is None:
            return None
        flops += 6 * params[cell.model] * tokens
    return flops / (H100_BF16_FLOPS * ASSUMED_MFU) / 3600
