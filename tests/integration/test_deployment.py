"""A real Prefect server + process worker + MLflow UI on 127.0.0.1 (`orpo serve`), a deployment
from prefect.yaml (`prefect deploy`), triggered with the `prefect deployment run` CLI."""

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from orpo.training.launch import free_port
from tests.micro import MICRO

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("served")
    prefect_port, mlflow_port = free_port(), free_port()
    env = dict(
        os.environ,
        ORPO_HOME=str(home),
        PREFECT_HOME=str(home / ".prefect"),
        MLFLOW_TRACKING_URI=f"sqlite:///{home}/mlflow.db",
        ORPO_REPO=str(REPO),
        PREFECT_API_URL=f"http://127.0.0.1:{prefect_port}/api",
    )
    env.pop("PREFECT_PROFILES_PATH", None)
    subprocess.run(
        [
            BIN / "orpo",
            "serve",
            "--prefect-port",
            str(prefect_port),
            "--mlflow-port",
            str(mlflow_port),
        ],
        env=env,
        check=True,
        cwd=REPO,
        timeout=300,
    )
    try:
        yield home, env, mlflow_port
    finally:
        subprocess.run([BIN / "orpo", "stop"], env=env, cwd=REPO, timeout=120)


def prefect(env, *args, timeout=600):
    return subprocess.run(
        [BIN / "prefect", *args], env=env, cwd=REPO, timeout=timeout, capture_output=True, text=True
    )


def test_services_listen_on_loopback_only(served):
    home, env, mlflow_port = served
    pids = {p.stem: int(p.read_text()) for p in (home / ".run").glob("*.pid")}
    assert set(pids) == {"prefect-server", "prefect-worker", "mlflow-ui"}
    listening = subprocess.run(["ss", "-ltnp"], capture_output=True, text=True).stdout
    for line in listening.splitlines():
        if (
            f":{mlflow_port} " in line
            or f":{env['PREFECT_API_URL'].split(':')[2].split('/')[0]} " in line
        ):
            assert "127.0.0.1:" in line, line


def test_deploy_run_and_find_mlflow_runs(served):
    home, env, mlflow_port = served
    deployed = prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    micro = home / "micro.yaml"
    micro.write_text(yaml.safe_dump(MICRO))
    run = prefect(
        env,
        "deployment",
        "run",
        "orpo-ablation/smoke",
        "--param",
        f"experiment_file={micro}",
        "--watch",
        "--watch-timeout",
        "900",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Completed" in run.stdout
    # the MLflow UI's REST API lists the parent run and one child run per cell
    body = json.dumps({"experiment_ids": [_experiment_id(mlflow_port)], "max_results": 100})
    request = urllib.request.Request(
        f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/runs/search",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    runs = json.loads(urllib.request.urlopen(request, timeout=30).read())["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    cells = {t["orpo.cell_id"] for t in tags if "orpo.cell_id" in t}
    assert {"sft-opt-tiny-s0", "dpo-opt-tiny-b0.1-s0", "orpo-opt-tiny-l0.5-s0"} <= cells
    assert any("orpo.experiment_file" in t and t.get("prefect.flow_run_id") for t in tags)
    assert (home / "reports" / "micro" / "index.html").is_file()


def test_bad_param_is_rejected_before_a_run_exists(served):
    home, env, _ = served
    run = prefect(
        env, "deployment", "run", "orpo-ablation/smoke", "--param", "orpo_lambdas=[-1]", timeout=120
    )
    out = run.stdout + run.stderr
    assert run.returncode != 0, out
    assert "orpo_lambdas" in out


def _experiment_id(mlflow_port):
    url = f"http://127.0.0.1:{mlflow_port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=micro"
    return json.loads(urllib.request.urlopen(url, timeout=30).read())["experiment"]["experiment_id"]
