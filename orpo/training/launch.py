"""Start a training cell as real multi-process job: `torchrun` on one host, the `deepspeed`
launcher with a hostfile across hosts. Output lines go to a callback (the Prefect logger, or
stdout); the processes live in their own process group so a cancel stops all of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import torch

from orpo.timing import LAUNCHED_AT_ENV
from orpo.training.job import CellJob


class CellFailed(RuntimeError):
    """A training cell exited non-zero; the message carries the tail of its output."""


class CellStopped(RuntimeError):
    """The run is stopping (cancelled, SIGTERM, Ctrl-C): a cell of it does not start."""


def free_port() -> int:
    """A free TCP port on loopback: two runs on one host must not share DeepSpeed's default
    master port 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(job_path: Path, procs: int, hostfile: str | None, port: int) -> list[str]:
    """The command that starts a cell's processes: the worker itself for one local process
    (see `single_process_env`), torchrun for several, the deepspeed launcher across hosts."""
    worker = ["-m", "orpo.training.worker", str(job_path)]
    if procs == 1 and not hostfile:
        # torchrun would only supervise this one process, and its own interpreter and torch
        # import cost ~1.5 s of every cell's start-up on a 2-core machine
        return [sys.executable, *worker]
    if hostfile:
        # The deepspeed launcher ssh-es into every host of the hostfile; it forwards only
        # MLFLOW*/PYTHON*/NCCL* variables (and those in ~/.deepspeed_env) to other nodes.
        return [
            "deepspeed",
            "--hostfile",
            hostfile,
            "--num_gpus",
            str(procs),
            "--master_port",
            str(port),
            "--module",
            "orpo.training.worker",
            str(job_path),
        ]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *worker,
    ]


def single_process_env(port: int) -> dict[str, str]:
    """What torchrun would export for a one-process group: rank 0 of 1 on loopback."""
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def launch_env(job: CellJob) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if job.resources.device == "cpu" or not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed then uses gloo
    threads = job.resources.threads_per_proc
    if threads is None:  # share the cores instead of oversubscribing them
        busy = job.resources.procs_per_cell * job.resources.max_parallel_cells
        threads = max(1, (os.cpu_count() or 1) // busy)
    env["OMP_NUM_THREADS"] = str(threads)
    env[LAUNCHED_AT_ENV] = repr(time.time())  # the worker's start-up is measured from here
    return env


def run_cell(
    job: CellJob,
    on_line: Callable[[str], None] = print,
    job_path: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> None:
    """Run the job's processes to completion; raise CellFailed on a non-zero exit.
    `extra_env` adds to the processes' environment (the bench's step turns)."""
    job_path = job_path or job.write()
    port, procs, hostfile = free_port(), job.resources.procs_per_cell, job.resources.hostfile
    cmd = launch_command(job_path, procs, hostfile, port)
    env = {**launch_env(job), **(extra_env or {})}
    if procs == 1 and not hostfile:
        env.update(single_process_env(port))
    on_line(f"launch: {' '.join(cmd)}")
    tail: deque[str] = deque(maxlen=30)
    reason: str | None = None  # the worker's "[cell] FAILED: ..." line, if it printed one
    launcher_report = False
    log_path = Path(job.out_dir) / "train.log"
    with (
        log_path.open("a") as log_file,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            start_new_session=True,
        ) as proc,
    ):
        _LIVE.add(proc)
        try:
            if stop_requested():  # stopped between the caller's check and the launch
                raise CellStopped(f"{job.cell.id}: not started, the run is stopping")
            for line in proc.stdout:
                line = line.rstrip("\n")
                log_file.write(line + "\n")
                if reason is None and WORKER_FAILED in line:
                    reason = line.strip()
                # torchrun's report of a failed rank (its own traceback and a ChildFailedError
                # box naming no cause) goes to train.log only: it would push the worker's
                # error out of the tail and bury it in the forwarded output
                launcher_report = launcher_report or TORCHRUN_FAILED in line
                if launcher_report:
                    continue
                tail.append(line)
                if _worth_forwarding(line):
                    on_line(line)
            code = proc.wait()
        except BaseException:  # cancel / Ctrl-C: stop every rank, not just the launcher
            _kill_group(proc)
            raise
        finally:
            _LIVE.discard(proc)
    if code != 0:
        reason = reason or next((t for t in reversed(tail) if "FAILED" in t or "Error" in t), None)
        raise CellFailed(
            f"cell {job.cell.id} exited with code {code}"
            + (f": {reason.strip()}" if reason else "")
            + f"\n--- last lines ({log_path}) ---\n"
            + "\n".join(tail)
        )


WORKER_FAILED = "] FAILED: "  # orpo.training.worker's last words on an error
TORCHRUN_FAILED = "failed (exitcode:"  # torchrun's first line about a failed rank

_NOISY = (
    "[INFO]",
    "Loading weights",
    "Writing model",
    "real_accelerator.py",
    "deepspeed_shm_comm_op built successfully",
    # deepspeed.utils.zero_to_fp32 consolidating the best checkpoint (with tqdm bars)
    "Processing zero checkpoint",
    "Parsing checkpoint created by",
    "Loading checkpoint shards",
    "Detected checkpoint of type",
    "Gathering sharded weights",
    "Reconstructed Trainable",
)


def _worth_forwarding(line: str) -> bool:
    """DeepSpeed and transformers are chatty; forward our lines, warnings and errors."""
    return bool(line.strip()) and not any(n in line for n in _NOISY)


# Cells run in their own sessions (so a cancel can signal a cell's whole process group), which
# also means they would outlive their parent: the flow stops them when it is cancelled.
_LIVE: set[subprocess.Popen] = set()

# A stop is for one run: the orchestration layer sets `run_scope` to name the run the calling
# thread works for (tasks/train.py: the Prefect flow run, shared by the flow and its task
# threads), so that a later run in the same process (tests run several flows) starts cells again.
_STOPPED: set[str] = set()


def _the_process() -> str:
    return ""


run_scope: Callable[[], str] = _the_process


def stop_requested() -> bool:
    """Whether the run of the calling thread is stopping: a cell about to start, or waiting
    for a training slot, gives up instead (CellStopped)."""
    return run_scope() in _STOPPED


def stop_live_cells(grace_s: float = 10.0) -> None:
    """Stop the cells that are running (SIGTERM, SIGKILL after grace_s), and start no cell of
    the current run from now on: a cell launched after the kill would train on, and keep the
    stopping process waiting for it."""
    _STOPPED.add(run_scope())  # before the kill: run_cell checks it after registering a cell
    for proc in list(_LIVE):
        _kill_group(proc, grace_s)


def _kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
