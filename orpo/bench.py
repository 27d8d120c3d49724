"""`orpo bench`: what a training step costs, per method, model size and engine.

For each method (sft, dpo, orpo) and model (by default the smallest and the largest preset) it
measures seconds per optimizer step, tokens/s, forward passes per step and peak memory (RSS) for

- ZeRO-3 with 1 and with 2 processes, launched for real (pipeline.train_cell -> torchrun ->
  worker), start-up excluded: the figures come from the worker's result.json (the median of
  its per-step times, `typical_step_seconds`; evaluation, checkpoints and consolidation are
  outside every step);
- plain torch in one process (TorchEngine + run_loop, no launcher, no checkpoints): the floor.
  It runs in a fresh spawned interpreter per cell so that its peak RSS is its own;
- with `against_trl`, TRL's ORPOTrainer and DPOTrainer on the floor's model, rows and settings
  (orpo.bench_trl), and a table of our tokens/s against TRL's per method.

Peak RSS comes twice: over the whole cell, and by the end of the last optimizer step ("step
peak"), which leaves out what only a real cell does after training (the final checkpoint, the
ZeRO-3 consolidation and export) and so compares the engines' training memory.

With `rounds`, the engines of each (model, method) run that many times in turn; with `paired`,
they train at the same time in their own processes and take turns step by step (orpo.turns),
so that a ratio compares steps run seconds apart rather than cells run minutes apart.

The global batch is the same everywhere (2 processes run half the micro-batch each). Writes
`bench.json` and the markdown table `bench.md` into `out_dir`. A benchmark, not a test: the
figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from orpo.methods import PAPER_METHODS
from orpo.turns import TURNS_ENV, mark_done, turns_spec

METHODS = PAPER_METHODS  # the paper's three; the others cost what ORPO or DPO cost per step
GLOBAL_BATCH = 16  # pairs per optimizer step (`--global-batch`; a GPU wants more)
DATA = {
    "source": "synthetic",
    "synthetic": {"n_train": 256, "n_eval": 32, "n_test": 8},
    "max_length": 48,
    "max_prompt_length": 24,
    "tokenizer_vocab_size": 384,
}
LR = {"sft": 1e-3, "dpo": 2e-4, "orpo": 1e-3}
ENGINES = (("zero3", 1), ("zero3", 2), ("torch", 1))
ENGINE_NAMES = {"zero3": "ZeRO-3", "torch": "plain torch", "trl": "TRL"}


def _experiment(name: str, models, steps: int, procs: int, global_batch: int = GLOBAL_BATCH):
    from orpo.config import parse_experiment

    def optim(method: str) -> dict:
        return {
            "lr": LR[method],
            "epochs": 100,
            "batch_size": global_batch // procs,
            "grad_accum": 1,
            "eval_every": 10**6,
            "checkpoint_every": 10**6,
            "max_steps": steps,
        }

    return parse_experiment(
        {
            "name": name,
            "description": "orpo bench",
            "data": DATA,
            "models": list(models),
            "methods": list(METHODS),
            "orpo_lambdas": [0.1],
            "dpo_betas": [0.1],
            "seeds": [0],
            **{m: optim(m) for m in METHODS},
            "eval": {"judge": "oracle"},
            "resources": {"procs_per_cell": procs, "max_parallel_cells": 1, "zero_stage": 3},
        },
        f"orpo bench ({name})",
    )


@contextmanager
def _project_home(folder: Path):
    previous = os.environ.get("ORPO_HOME")
    os.environ["ORPO_HOME"] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ORPO_HOME", None)
        else:
            os.environ["ORPO_HOME"] = previous


# Dense bf16 peaks (NVIDIA's datasheets), for model FLOP utilisation on GPUs; none on CPU,
# where no comparable peak is published for these cores.
GPU_BF16_PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def device_peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in GPU_BF16_PEAK_FLOPS.items() if key in name), None)


def model_flops(parameters: int | None, tokens_per_s: float) -> float | None:
    """Training FLOP/s as MFU counts them: 6 x parameters per token (forward 2, backward 4)."""
    return 6 * parameters * tokens_per_s if parameters else None


def typical_step_seconds(result: dict) -> float:
    """The median optimizer step, the first one left out when at least two others remain (it
    also creates the optimizer's state and touches fresh memory). A median, because on a
    shared machine single steps stall when another process takes the cores; the mean
    (train_seconds / steps) where a result has no per-step times."""
    each = result.get("step_seconds") or []
    if not each:
        return result["train_seconds"] / max(1, result["steps"])
    return statistics.median(each[1:] if len(each) >= 3 else each)


def _row(model: str, method: str, engine: str, procs: int, result: dict) -> dict:
    steps = max(1, result["steps"])
    train_passes = result["forward_passes"] - result.get("reference_forward_passes", 0)
    seconds_per_step = typical_step_seconds(result)
    tokens_per_s = result["tokens"] / steps / max(seconds_per_step, 1e-9)
    flops = model_flops(result.get("parameters"), tokens_per_s)
    peak = device_peak_flops()
    return {
        "model": model,
        "method": method,
        "engine": engine,
        "procs": procs,
        "parameters": result.get("parameters"),
        "steps": result["steps"],
        "seconds_per_step": seconds_per_step,  # the median step
        "mean_seconds_per_step": result["train_seconds"] / steps,
        "tokens_per_s": tokens_per_s,
        "tokens_per_step": result["tokens"] / steps,
        "model_tflops": flops / 1e12 if flops else None,
        # against the device's bf16 peak, summed over processes' devices; None on CPU
        "mfu": flops / (peak * procs) if flops and peak else None,
        "forward_passes_per_step": train_passes / steps,  # summed over processes
        "reference_forward_passes": result.get("reference_forward_passes", 0),
        "peak_rss_mb": result["peak_rss_mb"],  # per process (the largest rank's)
        "step_peak_rss_mb": result.get("step_peak_rss_mb"),  # by the last step's end
        "peak_gpu_mb": result.get("peak_gpu_mb"),  # torch's allocator peak; None on CPU
        "wall_seconds": result.get("wall_seconds"),
        # other processes on the machine slow every figure down, badly so for OpenMP threads
        # that spin-wait on shared cores: the 1-minute load average when the cell finished
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _floor_child(job_json: str, threads: int, turns: str | None, queue) -> None:
    """Plain torch, in this (spawned) process: same data, model, objective and loop; with
    `turns` (a TURNS_ENV value), stepping in turn with the other engines."""
    try:
        import torch
        from transformers.utils import logging as hf_logging

        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # "Loading weights" bars of the DPO init model
        from orpo.methods import needs_reference
        from orpo.models import build_model, count_parameters, narrows_logits
        from orpo.timing import peak_rss_mb
        from orpo.tracking import NullSink
        from orpo.training.batches import load_stage_data, total_steps
        from orpo.training.engine import TorchEngine
        from orpo.training.job import CellJob
        from orpo.training.loop import run_loop
        from orpo.training.worker import (
            loop_config,
            model_kind,
            objective_config,
            peak_gpu_mb,
            reference_logps,
            resolve_tokenizer,
            tune_heap,
        )
        from orpo.turns import StepTurns

        started = time.time()
        job = CellJob.model_validate_json(job_json)
        tune_heap(job)
        tokenizer = resolve_tokenizer(job)
        data = load_stage_data(
            job.cell.stage, job.data_dir, tokenizer, job.max_length, job.max_prompt_length
        )
        optim = job.optim
        steps = total_steps(
            len(data.train), optim.epochs, optim.batch_size * optim.grad_accum, optim.max_steps
        )
        model = build_model(
            job.init_from or job.model, tokenizer, kind=model_kind(job), seed=job.cell.seed
        )
        n_params = count_parameters(model)
        obj_cfg = objective_config(job, narrows_logits(model))
        engine = TorchEngine(model, optim, job.resources, steps)
        ref, ref_passes = None, 0
        if needs_reference(job.cell.stage):
            ref, _ = reference_logps(engine, data, job, lambda message: None, obj_cfg.narrow_logits)
            ref_passes = sum(-(-len(items) // 16) for items in (data.train, data.eval))
        loop_cfg = loop_config(job, steps, ckpt_dir=None)
        state = run_loop(
            engine,
            data,
            obj_cfg,
            loop_cfg,
            NullSink(),
            lambda message: None,
            ref,
            turns=StepTurns.from_spec(turns),
        )
        queue.put(
            {
                "steps": state.step,
                "train_seconds": state.train_seconds,
                "step_seconds": state.step_seconds,
                "tokens": state.tokens,
                "forward_passes": state.forward_passes + ref_passes,
                "reference_forward_passes": ref_passes,
                "peak_rss_mb": peak_rss_mb(),
                "step_peak_rss_mb": state.step_peak_rss_mb,
                "peak_gpu_mb": peak_gpu_mb(),
                "parameters": n_params,
                "wall_seconds": time.time() - started,
            }
        )
    except Exception as err:  # reported by the parent, which carries on with other cells
        queue.put({"error": f"{type(err).__name__}: {err}"})


def _run_floor(job, threads: int, turns: str | None = None) -> dict:
    return run_spawned(_floor_child, job.model_dump_json(), threads, turns)


def run_spawned(target, *args) -> dict:
    """target(*args, queue) in a fresh interpreter, so that its peak RSS is its own; it puts
    one result dict, or {"error": ...}, which is raised here."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    try:
        result = queue.get(timeout=3600)
    finally:
        proc.join(timeout=60)
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _fmt(value, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render_table(report: dict) -> str:
    s = report["settings"]
    m = report["machine"]
    rounds = s.get("rounds", 1)
    lines = [
        "# orpo bench",
        "",
        f"{m['cpus']} CPUs ({m.get('cpu_model') or m['processor'] or m['machine']}), "
        f"torch {m['torch']}, "
        f"deepspeed {m['deepspeed']}, "
        + (f"TRL {s['trl']}, " if s.get("trl") else "")
        + (
            f"{m['gpu']}, bf16 (ZeRO-3: bf16 weights, fp32 masters; plain torch and TRL: fp32 "
            "weights under bf16 autocast)"
            if m.get("gpu")
            else "fp32 on CPU"
        )
        + f"; {s['steps']} optimizer steps per cell, "
        f"global batch {s['global_batch']} pairs, max_length {s['max_length']}"
        + (
            f"; {rounds} rounds: the engines of each (model, method) ran in turn, each round "
            "in fresh cells, and each row compares with the floor of its own round"
            if rounds > 1
            else ""
        )
        + (
            "; paired: the engines of each (model, method) trained at the same time, each in "
            "its own process, taking turns step by step (one step ran at a time)"
            if s.get("paired")
            else ""
        )
        + ". s/step is the median optimizer step, the first left out as warm-up (start-up, "
        "evaluation, checkpoints and export are outside every step); tokens/s divides the "
        "mean tokens per step by it; forward "
        "passes are summed over processes; DPO's reference log-probs are computed once per "
        "cell (then cached), counted in 'ref fwd', not per step; peak RSS is per process; peak GPU "
        "MB is torch's allocator peak on the largest rank's GPU ('-' on CPU); "
        "'load' is the machine's 1-minute load average when the cell finished (above the "
        "CPU count, other work was competing and the row is slower than the machine can do).",
        "",
        "| model | params | method | engine | procs | s/step | tokens/s | fwd/step | ref fwd "
        "| peak RSS MB | step peak RSS MB | peak GPU MB | vs torch | step RSS vs torch "
        "| model TFLOP/s | MFU | load |" + (" round |" if rounds > 1 else ""),
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        + ("---:|" if rounds > 1 else ""),
    ]
    floors = _by_cell(report["rows"], "torch")
    for r in report["rows"]:
        which = f" {r.get('round', 1)} |" if rounds > 1 else ""
        if "error" in r:
            lines.append(
                f"| {r['model']} | - | {r['method']} | {ENGINE_NAMES[r['engine']]} | {r['procs']} | "
                f"failed: {r['error'][:80]} | | | | | | | | | | | |" + which
            )
            continue
        floor = floors.get(_cell(r))
        ratio = _ratio(r, floor, "seconds_per_step")
        rss_ratio = _ratio(r, floor, "step_peak_rss_mb")
        params = f"{r['parameters'] / 1e6:.2f}M" if r.get("parameters") else "-"
        lines.append(
            f"| {r['model']} | {params} | {r['method']} | {ENGINE_NAMES[r['engine']]} | "
            f"{r['procs']} | {r['seconds_per_step']:.3f} | {_fmt(r['tokens_per_s'])} | "
            f"{r['forward_passes_per_step']:g} | {r['reference_forward_passes']} | "
            f"{_fmt(r['peak_rss_mb'])} | {_fmt(r.get('step_peak_rss_mb'))} | "
            f"{_optional(r.get('peak_gpu_mb'), ',.0f')} | {ratio} | {rss_ratio} | "
            f"{_optional(r.get('model_tflops'), '.3f')} | "
            f"{_optional(r.get('mfu'), '.1%')} | {r.get('load_avg_1m', '-')} |" + which
        )
    rows = report["rows"]
    return "\n".join(lines + _rounds_table(rows, rounds) + _trl_table(rows, rounds)) + "\n"


def _cell(row: dict) -> tuple:
    """Which measurement a row belongs to: rows of one round compare with each other."""
    return row["model"], row["method"], row.get("round", 1)


def _by_cell(rows: list[dict], engine: str) -> dict[tuple, dict]:
    return {_cell(r): r for r in rows if r["engine"] == engine and "error" not in r}


def _rounds_table(rows: list[dict], rounds: int) -> list[str]:
    """With several rounds: each round's ratio to the floor measured beside it, and their
    median. A ratio within one round is a paired measurement (both cells ran minutes apart);
    its spread over rounds shows how far one round's ratio can be trusted."""
    if rounds < 2:
        return []
    floors, anchors = _by_cell(rows, "torch"), _by_cell(rows, "trl")
    lines = [
        "",
        "## Across rounds",
        "",
        "Each round's ratio to the plain-torch cell of the same round (above 1: slower, or "
        "more memory, than the floor), in round order, and their median.",
        "",
        "| model | method | engine | procs | s/step per round | time vs torch per round "
        "| median | step RSS vs torch per round | median | tokens/s vs TRL per round | median |",
        "|---|---|---|---:|---|---|---:|---|---:|---|---:|",
    ]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "error" not in r and r["engine"] != "torch":
            groups.setdefault((r["model"], r["method"], r["engine"], r["procs"]), []).append(r)
    for (model, method, engine, procs), runs in groups.items():
        runs = sorted(runs, key=lambda r: r.get("round", 1))
        cells = [_paired(runs, floors, key) for key in ("seconds_per_step", "step_peak_rss_mb")]
        # against TRL, ours over theirs in tokens/s (above 1: ours is faster)
        cells.append(("-", "-") if engine == "trl" else _paired(runs, anchors, "tokens_per_s"))
        steps = ", ".join(f"{r['seconds_per_step']:.3f}" for r in runs)
        lines.append(
            f"| {model} | {method} | {ENGINE_NAMES[engine]} | {procs} | {steps} | "
            + " | ".join(f"{listed} | {median}" for listed, median in cells)
            + " |"
        )
    return lines


def _paired(runs: list[dict], refs: dict[tuple, dict], key: str) -> tuple[str, str]:
    """Each run's `key` over that of the reference measured in its round: listed, and median."""
    pairs = [(r, refs[_cell(r)]) for r in runs if _cell(r) in refs]
    ratios = [r[key] / ref[key] for r, ref in pairs if r.get(key) and ref.get(key)]
    if not ratios:
        return "-", "-"
    return ", ".join(f"{x:.2f}x" for x in ratios), f"{statistics.median(ratios):.2f}x"


def _ratio(row: dict, floor: dict | None, key: str) -> str:
    if not floor or not floor.get(key) or row.get(key) is None:
        return "-"
    return f"{row[key] / floor[key]:.2f}x"


def _trl_table(rows: list[dict], rounds: int) -> list[str]:
    """Our engines' tokens/s against TRL's on the same model, rows and settings, per method."""
    ok = [r for r in rows if "error" not in r]
    trl = _by_cell(ok, "trl")
    if not trl:
        return []
    lines = [
        "",
        "## Against TRL",
        "",
        "Tokens/s of each of our engines divided by TRL's on the same model, training rows, "
        "batch, lengths and optimiser (above 1: ours is faster). Each side counts the "
        "unpadded tokens it fed the model; 'tokens/step' shows both saw the same shapes.",
        "",
        "| model | method | TRL s/step | TRL tokens/s | TRL tokens/step | engine | procs "
        "| tokens/s | tokens/step | vs TRL |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in ok:
        anchor = trl.get(_cell(r))
        if anchor is None or r["engine"] == "trl":
            continue
        method = f"{r['method']} (round {r['round']})" if rounds > 1 else r["method"]
        lines.append(
            f"| {r['model']} | {method} | {anchor['seconds_per_step']:.3f} | "
            f"{_fmt(anchor['tokens_per_s'])} | {_fmt(anchor['tokens_per_step'])} | "
            f"{ENGINE_NAMES[r['engine']]} | {r['procs']} | {_fmt(r['tokens_per_s'])} | "
            f"{_fmt(r['tokens_per_step'])} | {r['tokens_per_s'] / anchor['tokens_per_s']:.2f}x |"
        )
    return lines


def _optional(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first CPU's name, family, model and whether it has AVX-512, from Linux's cpuinfo
    (None elsewhere): two machines that both call themselves "AMD EPYC" ran the same bench
    2.6x apart, and only family and model told them apart."""
    try:
        block = cpuinfo.read_text().split("\n\n")[0]
    except OSError:
        return None
    fields = {}
    for line in block.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    if "model name" not in fields:
        return None
    avx512 = "avx512f" in fields.get("flags", "").split()
    return (
        f"{fields['model name']}, family {fields.get('cpu family', '?')} model "
        f"{fields.get('model', '?')}, AVX-512 {'yes' if avx512 else 'no'}"
    )


def _machine() -> dict:
    import deepspeed
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deepspeed": deepspeed.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def parse_engine(text: str) -> tuple[str, int]:
    """'zero3x2' -> ("zero3", 2); 'torch' -> ("torch", 1)."""
    for engine, procs in ENGINES:
        if text in (f"{engine}x{procs}", engine if procs == 1 else None):
            return engine, procs
    names = ", ".join(f"{e}x{p}" for e, p in ENGINES)
    raise ValueError(f"engine {text!r}: choose from {names}")


def check_selection(
    methods, engines, global_batch: int = GLOBAL_BATCH, rounds: int = 1, paired: bool = False
) -> None:
    """Bad selections fail before anything trains, naming the value."""
    if rounds < 1:
        raise ValueError(f"rounds {rounds}: must be at least 1")
    if paired and (several := [f"{e}x{p}" for e, p in engines if p > 1]):
        # the ranks of one cell step together: one turn would hold only one of them
        raise ValueError(
            f"engine {several[0]}: --paired takes turns between one-process engines only"
        )
    procs = max((p for _, p in engines), default=1)
    if global_batch < 1 or global_batch % procs:
        raise ValueError(
            f"global batch {global_batch}: must be a positive multiple of {procs}, the most "
            "processes an engine uses (each process runs an equal share)"
        )
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"method {method!r}: choose from {', '.join(METHODS)}")
    if "dpo" in methods and ("sft" not in methods or ("zero3", 1) not in engines):
        # every engine's DPO starts from the SFT model the 1-process ZeRO-3 cell trains
        raise ValueError("method 'dpo' needs 'sft' and engine zero3x1 in the same run")


def run_benchmark(
    out_dir: Path,
    steps: int = 8,
    models=("opt-tiny", "opt-medium"),
    methods=METHODS,
    engines=ENGINES,
    against_trl: bool = False,
    global_batch: int = GLOBAL_BATCH,
    rounds: int = 1,
    paired: bool = False,
) -> Path:
    """Measure every selected (model, method, engine) cell, plus TRL's trainers with
    `against_trl`; write bench.json and bench.md into out_dir and return bench.md's path.
    With `rounds` > 1 the engines of each (model, method) run that many times in turn
    (A B A B ...), each round in fresh cells, and the tables add each round's ratios and
    their median. With `paired`, the engines of each (model, method) train at the same time,
    each in its own process, and take turns step by step (`orpo.turns`): each ratio then
    compares steps run seconds apart instead of cells run minutes apart."""
    from orpo import bench_trl, paths
    from orpo.config import cell_id, expand_cells
    from orpo.data.prepare import prepare_data
    from orpo.pipeline import make_job, train_cell
    from orpo.training.launch import CellFailed

    # cells, models and data in a fresh folder (a finished cell would be cached, not re-run);
    # removed afterwards unless a cell failed (its train.log tells why)
    methods = [m for m in METHODS if m in methods]  # SFT before DPO, whatever the order given
    engines = [e for e in ENGINES if e in engines]
    check_selection(methods, engines, global_batch, rounds, paired)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    trl = bench_trl.require_trl() if against_trl else None
    if against_trl:
        engines.append(("trl", 1))
    work = Path(tempfile.mkdtemp(prefix="orpo-bench-"))
    models = list(models)
    report = {
        "settings": {
            "steps": steps,
            "models": models,
            "methods": methods,
            "engines": [f"{e}x{p}" for e, p in engines],
            "trl": trl,
            "global_batch": global_batch,
            "rounds": rounds,
            "paired": paired,
            "max_length": DATA["max_length"],
            "data": DATA,
        },
        "machine": _machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rows": [],
    }
    cells = [
        (engine, procs, method)
        for engine, procs in engines
        for method in methods
        if engine != "trl" or method in bench_trl.TRL_METHODS
    ]
    total = len(models) * len(cells) * rounds
    done = 0
    began = time.time()

    lock = threading.Lock()  # paired cells finish in threads of their own

    def record(row: dict) -> None:
        with lock:
            _record(row)

    def _record(row: dict) -> None:
        nonlocal done
        done += 1
        report["rows"].append(row)
        if "error" in row:
            text = f"FAILED: {row['error'].splitlines()[0]}"
        else:
            text = (
                f"{row['seconds_per_step']:.3f} s/step, {row['tokens_per_s']:,.0f} tokens/s, "
                f"{row['forward_passes_per_step']:g} fwd/step, "
                f"peak RSS {row['peak_rss_mb']:,.0f} MB"
            )
        which = f", round {row['round']}/{rounds}" if rounds > 1 else ""
        print(
            f"[bench {done}/{total}, {time.time() - began:.0f} s] {row['model']} {row['method']} "
            f"{row['engine']} x{row['procs']}{which}: {text}",
            flush=True,
        )
        (out_dir / "bench.json").write_text(json.dumps(report, indent=2))  # partial results too

    with _project_home(work):
        experiments = {}
        for rnd in range(rounds):  # each round its own cells: a finished cell is not re-run
            for engine, procs in engines:
                name = f"bench-{engine}-{procs}p" + (f"-r{rnd + 1}" if rounds > 1 else "")
                exp = _experiment(name, models, steps, procs, global_batch)
                prepare_data(exp, paths.data_dir(exp.name))
                experiments[engine, procs, rnd] = exp
        # The engines of one (model, method) run back to back, and with rounds in turn: this
        # machine's speed drifts over minutes (other tenants take its cores), and a ratio of
        # cells measured far apart carries that drift. SFT precedes DPO: the floor's and TRL's
        # DPO start from ZeRO-3's SFT model of the same round, which runs first among the engines.
        failed: set[tuple[str, str, int, int]] = set()

        def run_one(
            model: str, method: str, engine: str, procs: int, rnd: int, turns: str | None = None
        ) -> None:
            exp = experiments[engine, procs, rnd]
            cell = next(c for c in expand_cells(exp) if c.model == model and c.stage == method)
            # rounds count from 1 in rows, as printed
            base = {
                "model": model,
                "method": method,
                "engine": engine,
                "procs": procs,
                "round": rnd + 1,
            }
            if method == "dpo" and (model, engine, procs, rnd) in failed:
                record({**base, "error": "its SFT cell failed"})
                return
            job = make_job(exp, cell)
            try:
                if engine in ("torch", "trl") and method == "dpo":
                    # start from the 1-process ZeRO-3 SFT model, as that DPO cell did
                    sft = experiments["zero3", 1, rnd].name
                    source = paths.cell_dir(sft, cell_id("sft", model, 0))
                    job = job.model_copy(update={"init_from": str(source / "model")})
                threads = max(1, os.cpu_count() or 1)
                if engine == "torch":
                    result = _run_floor(job, threads, turns)
                elif engine == "trl":
                    result = bench_trl.run_trl(job, method, threads, turns)
                else:
                    env = {TURNS_ENV: turns} if turns else None
                    result = train_cell(job, on_line=lambda line: None, extra_env=env)
                    if result.get("status") == "cached":  # a stored result: nothing was timed
                        raise RuntimeError(f"{job.cell.id}: served from the store, not trained")
                record({**base, **_row(model, method, engine, procs, result)})
            except (CellFailed, RuntimeError, FileNotFoundError) as err:
                if method == "sft":
                    failed.add((model, engine, procs, rnd))
                record({**base, "error": str(err)})

        def run_paired(model: str, method: str, rnd: int, group: list[tuple[str, int]]) -> None:
            """The group's cells at once, each in its own process, stepping in turn."""
            folder = work / "turns" / f"{model}-{method}-r{rnd + 1}"
            folder.mkdir(parents=True)

            def one(i: int, engine: str, procs: int) -> None:
                try:
                    run_one(model, method, engine, procs, rnd, turns_spec(folder, i, len(group)))
                finally:  # returned or failed: the others no longer wait for its steps
                    mark_done(folder, i)

            with ThreadPoolExecutor(len(group)) as pool:
                for future in [pool.submit(one, i, *e) for i, e in enumerate(group)]:
                    future.result()

        for model in models:
            for method in methods:
                for rnd in range(rounds):
                    group = [(e, p) for e, p in engines if (e, p, method) in cells]
                    if paired:
                        run_paired(model, method, rnd, group)
                        continue
                    for engine, procs in group:
                        run_one(model, method, engine, procs, rnd)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if any("error" in r for r in report["rows"]):
        print(f"some cells failed: their folders are kept in {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    report["rows"].sort(
        key=lambda r: (
            models.index(r["model"]),
            METHODS.index(r["method"]),
            r.get("round", 1),
            ("torch", "trl", "zero3").index(r["engine"]),
            r["procs"],
        )
    )
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2))
    table = out_dir / "bench.md"
    table.write_text(render_table(report))
    print(table.read_text(), flush=True)
    return table
