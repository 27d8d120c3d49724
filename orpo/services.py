"""`orpo serve` / `orpo stop`: a Prefect server, a process work pool with one worker, and the
MLflow UI over the same store `orpo run` uses, all bound to 127.0.0.1, stopped by process id.

Process ids and logs live in `<project home>/.run/`. Each service runs in its own session, so
stop signals its whole process group (the Prefect worker stops on SIGINT, not SIGTERM).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orpo.paths import project_home
from orpo.tracking import default_artifact_root, default_tracking_uri

WORK_POOL = "orpo-pool"
HOST = "127.0.0.1"


def run_dir() -> Path:
    path = project_home() / ".run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _env(prefect_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PREFECT_HOME", str(project_home() / ".prefect"))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_API_URL"] = f"http://{HOST}:{prefect_port}/api"
    env.setdefault("MLFLOW_TRACKING_URI", default_tracking_uri())
    env.setdefault("HF_HUB_OFFLINE", "1")
    # prefect.yaml's pull step changes into the code checkout (not ORPO_HOME, the data home)
    env.setdefault("ORPO_REPO", str(Path(__file__).resolve().parents[1]))
    return env


def _start(name: str, cmd: list[str], env: dict[str, str]) -> int:
    pid_file = run_dir() / f"{name}.pid"
    if pid_file.is_file() and _alive(int(pid_file.read_text())):
        print(f"{name}: already running (pid {pid_file.read_text().strip()})")
        return int(pid_file.read_text())
    log = (run_dir() / f"{name}.log").open("a")
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        cwd=project_home(),
    )
    pid_file.write_text(str(proc.pid))
    print(f"{name}: started (pid {proc.pid}), log {run_dir() / f'{name}.log'}")
    return proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def wait_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def serve(prefect_port: int = 4200, mlflow_port: int = 5000) -> None:
    env = _env(prefect_port)
    _start(
        "prefect-server",
        [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
        env,
    )
    wait_http(f"http://{HOST}:{prefect_port}/api/health")
    subprocess.run(
        [_bin("prefect"), "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _start(
        "prefect-worker",
        [_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process"],
        env,
    )
    _start(
        "mlflow-ui",
        [
            _bin("mlflow"),
            "server",
            "--backend-store-uri",
            env["MLFLOW_TRACKING_URI"],
            "--default-artifact-root",
            default_artifact_root(),
            "--host",
            HOST,
            "--port",
            str(mlflow_port),
        ],
        env,
    )
    wait_http(f"http://{HOST}:{mlflow_port}/health")
    print(
        f"Prefect UI  http://{HOST}:{prefect_port}   (export PREFECT_API_URL={env['PREFECT_API_URL']})"
    )
    print(f"MLflow UI   http://{HOST}:{mlflow_port}")


def stop() -> None:
    for name, sig in (
        ("prefect-worker", signal.SIGINT),
        ("mlflow-ui", signal.SIGTERM),
        ("prefect-server", signal.SIGTERM),
    ):
        pid_file = run_dir() / f"{name}.pid"
        if not pid_file.is_file():
            continue
        pid = int(pid_file.read_text())
        if _alive(pid):
            _signal_group(pid, sig)
            print(f"{name}: stopped (pid {pid})")
        pid_file.unlink()


def _signal_group(pid: int, sig: int, grace: float = 15.0) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return
    deadline = time.time() + grace
    while time.time() < deadline and _alive(pid):
        time.sleep(0.2)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
