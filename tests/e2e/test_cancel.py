"""Cancelling a flow run (SIGTERM to the process running it, which is what Prefect's worker
sends) stops the DeepSpeed processes of the cells it started, not just the flow, and leaves no
temporary Prefect API server behind."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.micro import MICRO

pytestmark = pytest.mark.e2e


def cell_processes(home: Path) -> list[str]:
    """Every process started for this ORPO_HOME: cells, and Prefect's temporary API server."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if f"ORPO_HOME={home}".encode() in environ and proc.name != str(os.getpid()):
            pids.append(proc.name)
    return pids


def _env(tmp_path: Path) -> dict:
    env = dict(
        os.environ,
        ORPO_HOME=str(tmp_path),
        PREFECT_HOME=str(tmp_path / ".prefect"),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db",
    )
    env.pop("PREFECT_API_URL", None)  # `orpo run` starts its own temporary API
    return env


def run_until_sft_trains(tmp_path: Path, experiment: dict) -> subprocess.Popen:
    """`orpo run` on the experiment in the background, returned once its SFT cell trains."""
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(experiment))
    run = subprocess.Popen(
        [Path(sys.executable).parent / "orpo", "run", str(tmp_path / "e.yaml")],
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while not (tmp_path / "runs/micro/cells/sft-opt-tiny-s0/metrics.jsonl").is_file():
            assert time.time() < deadline, "the SFT cell never started training"
            assert run.poll() is None, "orpo run ended before the SFT cell trained"
            time.sleep(1)
    except BaseException:
        run.kill()
        raise
    return run


def test_sigterm_stops_training_processes(tmp_path):
    long_sft = {**MICRO, "sft": {**MICRO["sft"], "max_steps": 5000, "epochs": 1000}}
    run = run_until_sft_trains(tmp_path, long_sft)
    try:
        assert len(cell_processes(tmp_path)) > 1, "no training process found"
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
        deadline = time.time() + 30
        while cell_processes(tmp_path) and time.time() < deadline:
            time.sleep(0.5)
        assert cell_processes(tmp_path) == []
        assert not (tmp_path / "runs/micro/cells/sft-opt-tiny-s0/result.json").exists()
    finally:
        run.kill()
        for pid in cell_processes(tmp_path):
            os.kill(int(pid), signal.SIGKILL)


def test_a_rerun_after_kill_9_reclaims_the_slots_and_marks_the_dead_run(tmp_path):
    """kill -9 of `orpo run` while a cell holds the only training slot, as an OOM kill or a lost
    machine would: the re-run must not wait forever on that slot, and the dead run's MLflow runs
    must not stay RUNNING."""
    from mlflow.tracking import MlflowClient

    # SFT alone, judged by the oracle: the smallest grid that trains, generates and reports
    one_slot = {
        **MICRO,
        "methods": ["sft"],
        "eval": {**MICRO["eval"], "judge": "oracle"},
        "resources": {**MICRO["resources"], "max_parallel_cells": 1},
    }
    long_sft = {**one_slot, "sft": {**MICRO["sft"], "max_steps": 5000, "epochs": 1000}}
    orpo, env = Path(sys.executable).parent / "orpo", _env(tmp_path)
    run = run_until_sft_trains(tmp_path, long_sft)
    try:
        for pid in [str(run.pid), *cell_processes(tmp_path)]:  # the whole machine goes down
            os.kill(int(pid), signal.SIGKILL)
        run.wait(timeout=30)
    finally:
        run.kill()
        for pid in cell_processes(tmp_path):
            os.kill(int(pid), signal.SIGKILL)

    rerun = subprocess.run(
        [orpo, "run", str(tmp_path / "e.yaml"), "--set", "sft.max_steps=3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=480,  # without the reclaim it waits on the dead run's slot for ever
    )
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "reclaimed 1 training slot(s)" in log
    assert "marked crashed" in log
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert [r.info.run_name for r in runs if r.info.status == "RUNNING"] == []
    failed = [r for r in runs if r.info.status == "FAILED"]
    assert any("died" in r.data.tags.get("orpo.failure_reason", "") for r in failed)
