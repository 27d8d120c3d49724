"""Where a run's time goes: each phase has one name, from a cell's result.json (and an evaluated
cell's evaluation.json and judge record) through MLflow to the report and the end-of-run log.

A training cell's wall time splits into
  startup_seconds    launch -> the worker's training code runs: launcher, interpreter, imports
  load_seconds       tokenizer, data, model, engine (process group, ZeRO-3 partitioning)
  reference_seconds  the reference model's log-prob pass (DPO, IPO; a cache hit only loads it)
  train_seconds      optimizer steps (what `orpo bench` divides by the step count)
  eval_seconds       the rest of the loop: held-out evaluation, checkpoints, logging
  export_seconds     consolidating the ZeRO-3 shards and writing the model folder
and an evaluated row's time into generation, log-ratio and judging seconds.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# set by the launcher to the wall clock at launch; the worker subtracts it to get its start-up
LAUNCHED_AT_ENV = "ORPO_LAUNCHED_AT"

CELL_PHASES = (
    "startup_seconds",
    "load_seconds",
    "reference_seconds",
    "train_seconds",
    "eval_seconds",
    "export_seconds",
)
EVAL_PHASES = ("generation_seconds", "logratio_seconds", "judge_seconds")
PHASES = CELL_PHASES + EVAL_PHASES

PHASE_LABELS = {
    "startup_seconds": "cell start-up (launcher, interpreter, imports)",
    "load_seconds": "cell set-up (data, model, engine)",
    "reference_seconds": "reference log-probs",
    "train_seconds": "optimizer steps",
    "eval_seconds": "held-out evaluation and checkpoints",
    "export_seconds": "consolidation and export",
    "generation_seconds": "generation",
    "logratio_seconds": "held-out log-ratios",
    "judge_seconds": "judging",
}


def startup_seconds(entered: float) -> float | None:
    """Seconds from the launcher's start of this cell to `entered` (a time.time()), or None
    when the worker was not started by the launcher (in-process runs, tests)."""
    launched = os.environ.get(LAUNCHED_AT_ENV)
    return max(0.0, entered - float(launched)) if launched else None


class Phases:
    """Wall-clock seconds per phase: `with phases("load_seconds"): ...` adds to that phase."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, phase: str) -> _Timer:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; phases: {', '.join(PHASES)}")
        return _Timer(self, phase)

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] = self.seconds.get(phase, 0.0) + seconds


class _Timer:
    def __init__(self, phases: Phases, phase: str) -> None:
        self.phases, self.phase = phases, phase

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.phases.add(self.phase, time.perf_counter() - self.started)


def breakdown(rows: Iterable[Mapping]) -> list[dict]:
    """Rows `{"cell_id", "phase", "seconds"}` -> per phase (in PHASES order, phases with no rows
    left out): the number of cells or rows it covers, summed seconds, its share of the summed
    total and the mean per item. Cells that ran in parallel sum beyond the wall time."""
    totals: dict[str, list[float]] = {}
    for row in rows:
        if row["seconds"] is None:
            continue
        totals.setdefault(row["phase"], []).append(float(row["seconds"]))
    grand = sum(sum(v) for v in totals.values()) or 1.0
    return [
        {
            "phase": phase,
            "items": len(totals[phase]),
            "seconds": sum(totals[phase]),
            "share": sum(totals[phase]) / grand,
            "mean_seconds": sum(totals[phase]) / len(totals[phase]),
        }
        for phase in PHASES
        if phase in totals
    ]


def breakdown_lines(
    rows: Iterable[Mapping], wall_seconds: float, setup_seconds: float, report_seconds: float
) -> str:
    """The end-of-run log block: the flow's wall time, its set-up and report, then each phase
    summed over the reported cells (see `breakdown`)."""
    lines = [
        f"time: {wall_seconds:,.1f} s wall in the flow: {setup_seconds:,.1f} s set-up (config, "
        f"tracking, data), {report_seconds:,.1f} s collecting results and rendering the report; "
        "per phase, summed over the reported cells (a cell reused from an earlier run counts "
        "what it took then; cells in parallel sum beyond the wall time):"
    ]
    for row in breakdown(rows):
        lines.append(
            f"  {PHASE_LABELS[row['phase']]:<46}{row['seconds']:>10,.1f} s {row['share']:>6.1%}"
            f"  ({row['items']} x {row['mean_seconds']:,.2f} s)"
        )
    return "\n".join(lines)


@functools.cache
def _glibc(name: str):
    """The glibc function `name`, or None under another C library (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL("libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    return _glibc("malloc_trim")


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the operating system (glibc; a no-op elsewhere).

    A training step frees most of what it allocates (activations, gradients, optimizer
    temporaries), but glibc keeps freed heap pages resident, and the next step's allocations
    often do not fit the holes: resident memory then grows step after step by memory nobody
    uses (SmolLM2-135M, ORPO, 5 steps: peak RSS 5,555 -> 5,063 MB with plain torch and
    7,091 -> 5,920 MB under ZeRO-3, whose per-step buffers fragment the heap more). Pages
    reused next step are faulted in again: ~0.1 s a step at 87M parameters, and at the tiny
    presets, whose steps take tens of milliseconds, a sizeable share (see `HeapTrim`)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# Linux's madvise advice values (sys/mman.h)
_MADV_DONTNEED = 4


def drop_pages(tensor: torch.Tensor) -> int:
    """Hand the whole pages inside a CPU tensor's memory back to the operating system, keeping
    the tensor: its values there read as zeros afterwards, and a page is faulted in again,
    zero-filled, when next written (Linux's MADV_DONTNEED on private memory, which is what
    torch's CPU tensors are). Returns the bytes dropped (0 elsewhere, and for GPU tensors).
    For a buffer whose values are dead until the next write: memory nobody needs stays
    resident otherwise."""
    return _advise(tensor, os.sysconf("SC_PAGE_SIZE"), _MADV_DONTNEED)


def _advise(tensor: torch.Tensor, page: int, advice: int) -> int:
    """madvise over the whole `page`-sized pages inside a CPU tensor's memory: the bytes advised."""
    madvise = _glibc("madvise")
    if madvise is None or tensor.device.type != "cpu":
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first, last = -(-start // page) * page, end // page * page
    if last <= first:
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if madvise(first, last - first, advice) != 0:
        return 0
    return last - first


# glibc's mallopt parameter for the size from which malloc maps a block of its own (malloc.h)
_M_MMAP_THRESHOLD = -3
# what a CPU training process sets it to: measured on SmolLM2-135M in `orpo bench`
# (benchmarks/zero3-tuning.md, 2026-12-06 evening)
TRAINING_MMAP_THRESHOLD = 1 << 20  # 1 MiB
# the largest threshold glibc accepts on 64-bit systems (its DEFAULT_MMAP_THRESHOLD_MAX)
_MAX_MMAP_THRESHOLD = 32 << 20
_fixed_threshold: int | None = None  # what map_large_blocks set in this process, if anything


def map_large_blocks(threshold: int = TRAINING_MMAP_THRESHOLD) -> bool:
    """From now on, give every heap block of `threshold` bytes or more its own memory mapping,
    returned to the operating system when freed (glibc's M_MMAP_THRESHOLD; a no-op elsewhere,
    and where the user set glibc's malloc variables, which win). True when it was set.

    glibc's default threshold starts at 128 KiB and rises to the largest mapped block freed so
    far, so after the first step a model's activations and gradients (1-4 MB each for
    SmolLM2-135M) come from the shared heap, where blocks that outlive a step pin the pages
    around them: freed memory the next step cannot reuse stays resident. ZeRO-3's hooks
    interleave more such blocks, and its forward left 150-320 MB more resident than plain
    torch's for the same tensors. With a fixed 1 MiB threshold both engines' step peaks fell
    (SmolLM2 ORPO, three rounds: plain torch 4,762-4,767 -> 4,573-4,579 MB, ZeRO-3 5,698-5,793
    -> 5,115-5,130 MB). The optimizer step, whose temporaries recur at the same sizes every
    step, runs inside `temporaries_on_heap` instead. Called once at the start of a CPU training
    process, before the model is built."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "mmap_threshold" in os.environ.get(
        "GLIBC_TUNABLES", ""
    ):
        return False
    global _fixed_threshold
    mallopt = _glibc("mallopt")
    if mallopt is None or not mallopt(_M_MMAP_THRESHOLD, int(threshold)):
        return False
    _fixed_threshold = int(threshold)
    return True


@contextmanager
def temporaries_on_heap() -> Iterator[None]:
    """Inside the block, blocks below 32 MiB come from the heap again, where the next call's
    blocks of the same sizes reuse them; after it, `map_large_blocks`' threshold holds again
    (a no-op where that was not set). For the optimizer step, whose temporaries are freed
    within it and recur at the same sizes every step: under a 1 MiB threshold, ZeRO-3's step
    (an fp64 copy of each gradient for the clipping norm, a flattened copy of each
    sub-group's gradients) mapped and faulted in fresh pages every step, 255k page faults
    and 1.0 s on opt-125m-shape against 90k and 0.42 s inside this block (plain torch's step:
    none either way). Forward and backward keep the 1 MiB threshold: their blocks outlive one
    another and fragment the heap."""
    mallopt = _glibc("mallopt") if _fixed_threshold is not None else None
    if mallopt is None:
        yield
        return
    mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)
    try:
        yield
    finally:
        mallopt(_M_MMAP_THRESHOLD, _fixed_threshold)


def resident_mb() -> float:
    """This process's resident memory now, in MB (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class HeapTrim:
    """`release_freed_memory`, called after each optimizer step, but only once resident memory
    has grown `slack_mb` beyond what the last trim left: a step that fragments the heap by
    hundreds of MB (a 100M-parameter model) is trimmed every time, while a tiny model's step,
    which frees a few MB, does not pay for faulting them in again (every-step trimming made
    opt-tiny's ORPO step 0.027 -> 0.054 s with plain torch)."""

    def __init__(self, slack_mb: float = 64.0):
        self.slack_mb = slack_mb
        self.left_mb: float | None = None  # resident memory right after the last trim

    def __call__(self) -> bool:
        """Trim if due; True when it did."""
        if self.left_mb is not None and resident_mb() < self.left_mb + self.slack_mb:
            return False
        release_freed_memory()
        self.left_mb = resident_mb()
        return True


def peak_rss_mb() -> float:
    """This process's resident-memory high-water mark so far, in MB: the kernel's VmHWM where
    /proc has it. Not getrusage's ru_maxrss, which Linux carries over an exec: a process that a
    larger one started (a cell from the flow, the benchmark's cells from the benchmark, which
    holds a dequantised model by then) would report at least its parent's peak."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
