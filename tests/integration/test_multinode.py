"""Several nodes for real: two torchrun agents on loopback, one per "node", each started as its
own process the way a scheduler (SLURM, Kubernetes) starts one per machine, meet through a c10d
rendezvous and train one ORPO cell together. Their losses must equal the one-node,
one-process run of the same cell: data parallelism across nodes changes who computes what,
not the result.

Both nodes share this host's file system, as real nodes share ORPO_HOME (see the README).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orpo import paths
from orpo.config import expand_cells, parse_experiment
from orpo.data.prepare import prepare_data
from orpo.pipeline import make_job, train_cell
from orpo.training.job import CellJob
from orpo.training.launch import free_port, launch_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

STEPS = 3
RAW = {
    "name": "multinode-test",
    "data": {
        "source": "synthetic",
        "synthetic": {"n_train": 32, "n_eval": 8, "n_test": 8},
        "max_length": 40,
        "max_prompt_length": 20,
        "tokenizer_vocab_size": 320,
    },
    "models": ["opt-tiny"],
    "methods": ["orpo"],
    "orpo_lambdas": [0.5],
    # batch 4 x accumulation 2 on one process = 8 pairs per step; the two-node run keeps the
    # 8 pairs as 2 nodes x batch 4 x accumulation 1
    "orpo": {
        "lr": 1e-3,
        "epochs": 1,
        "batch_size": 4,
        "grad_accum": 2,
        "warmup_ratio": 0.1,
        "eval_every": STEPS,
        "checkpoint_every": STEPS,
        "max_steps": STEPS,
    },
    "eval": {"judge": "oracle"},
    # one thread per process: the one-node reference and the two nodes run with the same math
    # libraries' settings, and two nodes on two cores do not oversubscribe them
    "resources": {"procs_per_cell": 1, "max_parallel_cells": 1, "threads_per_proc": 1},
}
TOL = 1e-4  # as the two-process test in test_training.py
NODES = 2
JOIN_TIMEOUT_S = 60  # a node that never shows up fails the rendezvous instead of hanging
RUN_TIMEOUT_S = 180


def node_command(job_path: Path, node_rank: int, endpoint: str, rdzv_id: str) -> list[str]:
    """What each machine of a two-node cell runs (torchrun is `python -m torch.distributed.run`).

    With the c10d backend the rendezvous hands out ranks and torchrun ignores --node_rank (it
    says so); it stays so that each node's command line names its node.
    is_host says which agent serves the rendezvous store: on loopback both would match the
    endpoint's address and race for it."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        str(NODES),
        "--nproc_per_node",
        "1",
        "--node_rank",
        str(node_rank),
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        endpoint,
        "--rdzv_id",
        rdzv_id,
        "--rdzv_conf",
        f"is_host={int(node_rank == 0)},join_timeout={JOIN_TIMEOUT_S}",
        # the address the other node reaches this one's workers at; the hostname would do on
        # real machines, loopback is certain here
        "--local_addr",
        "127.0.0.1",
        "--max_restarts",
        "0",
        "-m",
        "orpo.training.worker",
        str(job_path),
    ]


def stop(proc: subprocess.Popen) -> None:
    """End a node's torchrun and its worker (they share the session started for them)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def run_two_nodes(job: CellJob) -> tuple[list[int | None], list[str], float]:
    """Start both nodes, wait for both (stopped after RUN_TIMEOUT_S); returns their exit codes
    (None: stopped), their logs and the wall time."""
    job_path = job.write()
    port = free_port()
    endpoint, rdzv_id = f"127.0.0.1:{port}", f"multinode-test-{port}"
    env = launch_env(job)  # DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1, unbuffered output
    logs = [job.out / f"node{rank}.log" for rank in range(NODES)]
    procs: list[subprocess.Popen] = []
    started = time.monotonic()
    try:
        for rank, log in enumerate(logs):
            with log.open("w") as out:  # the child keeps its own copy of the descriptor
                procs.append(
                    subprocess.Popen(
                        node_command(job_path, rank, endpoint, rdzv_id),
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,  # one process group per node, to kill it whole
                    )
                )
        deadline = started + RUN_TIMEOUT_S
        codes: list[int | None] = []
        for proc in procs:
            try:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:  # None: still running, the logs say where
                codes.append(None)
    finally:
        for proc in procs:
            stop(proc)
    return codes, [log.read_text() for log in logs], time.monotonic() - started


def train_rows(cell_dir: Path) -> list[dict]:
    lines = (cell_dir / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "train/loss" in row]


def column(rows: list[dict], key: str) -> list[float]:
    return [row[key] for row in rows if key in row]


def test_two_nodes_match_one_process(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exp = parse_experiment(RAW, "tests/integration/test_multinode.py")
    prepare_data(exp, paths.data_dir(exp.name))
    (cell,) = expand_cells(exp)

    one = make_job(exp, cell)
    one_result = train_cell(one, on_line=lambda line: None)
    assert one_result["world_size"] == 1 and one_result["steps"] == STEPS

    two = one.model_copy(
        update={
            "out_dir": f"{one.out_dir}-2nodes",
            "optim": one.optim.model_copy(update={"grad_accum": 1}),
        }
    )
    codes, logs, wall = run_two_nodes(two)
    tails = "\n".join(
        f"--- node {r} ---\n" + "\n".join(log.splitlines()[-25:]) for r, log in enumerate(logs)
    )
    assert codes == [0, 0], tails
    result = json.loads((two.out / "result.json").read_text())
    # WORLD_SIZE=2 with one process per node: the worker only sees 2 if both nodes joined
    assert result["world_size"] == NODES and result["steps"] == STEPS, tails
    assert result["tokens"] == one_result["tokens"]  # the same pairs were trained on

    rows_one, rows_two = train_rows(one.out), train_rows(two.out)
    assert [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [1, 2, 3]
    for key in ("train/loss", "train/grad_norm", "eval/loss"):
        expected, actual = column(rows_one, key), column(rows_two, key)
        assert len(actual) == len(expected) > 0, key
        assert actual == pytest.approx(expected, abs=TOL, rel=TOL), (key, actual, expected)
    loss_diff = max(
        abs(a - b)
        for a, b in zip(column(rows_two, "train/loss"), column(rows_one, "train/loss"), strict=True)
    )
    print(f"two-node wall {wall:.1f}s, max |train/loss difference| {loss_diff:.3g}")
