"""Cancelling a flow run (SIGTERM to the process running it, which is what Prefect's worker
sends) stops the DeepSpeed processes of the cells it started, not just the flow, and leaves no
temporary Prefect API server behind."""

import json
import os
import signal
import socket
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


# SFT alone, judged by the oracle, one training slot: the smallest grid that trains, generates
# and reports (tasks.train.training_slots names its limit "orpo-train-micro")
ONE_SLOT = {
    **MICRO,
    "methods": ["sft"],
    "eval": {**MICRO["eval"], "judge": "oracle"},
    "resources": {**MICRO["resources"], "max_parallel_cells": 1},
}


def _another_run_holds_the_slot(tmp_path: Path, env: dict) -> Path:
    """What another live run of the experiment looks like to a new one while it trains: the
    only training slot taken (in the Prefect database under PREFECT_HOME, which every temporary
    API of this home shares) and an entry in runs/micro/live/ with a live pid (this test's), so
    that the new run's start-up reclaim leaves the slot alone and its cell waits. Returns the
    entry, whose removal stands for that run ending."""
    take_the_slot = (
        "from prefect import get_client\n"
        "from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate as Limit\n"
        "with get_client(sync_client=True) as client:\n"
        "    client.create_global_concurrency_limit(\n"
        "        Limit(name='orpo-train-micro', limit=1, active_slots=1))\n"
    )
    subprocess.run([sys.executable, "-c", take_the_slot], env=env, check=True, timeout=120)
    entry = tmp_path / "runs/micro/live/holder.json"
    entry.parent.mkdir(parents=True)
    holder = {"flow_run_id": "holder", "host": socket.gethostname(), "pid": os.getpid()}
    entry.write_text(json.dumps(holder))
    return entry


def _kill_session(run: subprocess.Popen, home: Path) -> list[str]:
    """Kill what is left of a run started in its own session; returns what was still running
    15 s after the run itself exited (the temporary API server stops with it)."""
    deadline = time.time() + (15 if run.poll() is not None else 0)
    while cell_processes(home) and time.time() < deadline:
        time.sleep(0.5)
    leftover = cell_processes(home)
    for pid in [str(run.pid), *leftover]:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    run.wait()
    return leftover


def _running_mlflow_runs(tracking_uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("micro")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def test_sigterm_and_ctrl_c_stop_a_run_waiting_for_a_slot(tmp_path):
    """A run whose cell waits for a training slot (another live run of the experiment holds the
    only one) stops promptly on SIGTERM (exit 143) and on Ctrl-C (SIGINT to its process group,
    exit 130), leaving no process, no live-run entry and no RUNNING MLflow run behind; once the
    other run is gone, the next `orpo run` finishes."""
    orpo, env = Path(sys.executable).parent / "orpo", _env(tmp_path)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    (tmp_path / "e.yaml").write_text(yaml.safe_dump(ONE_SLOT))
    holder = _another_run_holds_the_slot(tmp_path, env)

    for sig, code, to_group in ((signal.SIGTERM, 143, False), (signal.SIGINT, 130, True)):
        log = tmp_path / f"{sig.name}.log"
        with log.open("w") as out:
            run = subprocess.Popen(
                [orpo, "run", str(tmp_path / "e.yaml")],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C signals the terminal's whole process group
                # as in a terminal: a shell without job control starts `cmd &` ignoring SIGINT
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        try:
            deadline = time.time() + 180
            while "sft-opt-tiny-s0: waiting for one of 1 training slot(s)" not in log.read_text():
                assert time.time() < deadline, f"the cell never waited:\n{log.read_text()[-3000:]}"
                assert run.poll() is None, f"orpo run ended early:\n{log.read_text()[-3000:]}"
                time.sleep(0.5)
            time.sleep(2)  # well inside the wait
            sent = time.monotonic()
            (os.killpg if to_group else os.kill)(run.pid, sig)
            try:
                returncode = run.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{sig.name} did not stop the run in 20 s:\n{log.read_text()[-3000:]}")
            print(f"{sig.name}: exited {returncode} after {time.monotonic() - sent:.1f} s")
            assert returncode == code, log.read_text()[-3000:]
        finally:
            leftover = _kill_session(run, tmp_path)
        assert leftover == [], f"left running: {leftover}\n{log.read_text()[-3000:]}"
        assert sorted(holder.parent.glob("*.json")) == [holder]  # its own entry is gone
        assert _running_mlflow_runs(env["MLFLOW_TRACKING_URI"]) == []

    holder.unlink()  # the other run ends (dies, as far as the slot is concerned)
    rerun = subprocess.run(
        [orpo, "run", str(tmp_path / "e.yaml")], env=env, capture_output=True, text=True,
        timeout=480,
    )  # fmt: skip
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "reclaimed 1 training slot(s)" in log
    assert _running_mlflow_runs(env["MLFLOW_TRACKING_URI"]) == []
