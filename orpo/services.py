"""`orpo serve` / `orpo stop`: a Prefect server, a process work pool with its workers, and the
MLflow tracking server/UI over the same store `orpo run` uses, all bound to 127.0.0.1, stopped
by process id.

Two stores: SQLite (the default: `<home>/.prefect/prefect.db` and `<home>/mlflow.db`), or with
`--db postgres` a local PostgreSQL cluster in `<home>/.run/postgres/` (`orpo.postgres`) holding
the databases `prefect` (the Prefect server's) and `mlflow` (the tracking store, which the
workers' flow runs and their cells also write to directly, through MLFLOW_TRACKING_URI).

Process ids and logs live in `<home>/.run/`, and `.run/serve.json` records what was started
(store, ports, workers), so `orpo stop` stops exactly that and a second `orpo serve` with
another store is refused while the first runs. Each service runs in its own session, so stop
signals its whole process group (the Prefect worker stops on SIGINT, not SIGTERM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orpo.paths import prefect_home, project_home
from orpo.postgres import ROLE, Cluster, PostgresError
from orpo.tracking import default_artifact_root, default_tracking_uri

WORK_POOL = "orpo-pool"
HOST = "127.0.0.1"
DATABASES = ("sqlite", "postgres")
SERVE_STATE = "serve.json"


def run_dir() -> Path:
    path = project_home() / ".run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _env(prefect_port: int, mlflow_port: int, cluster: Cluster | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(prefect_home())
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_API_URL"] = f"http://{HOST}:{prefect_port}/api"
    if cluster is None:
        env.setdefault("MLFLOW_TRACKING_URI", default_tracking_uri())
    else:
        # every process started from here (server, workers, their flow runs and cells) uses
        # the cluster, whatever the calling shell had
        env.update(cluster.client_env())
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = cluster.url("prefect", "asyncpg")
        env["MLFLOW_TRACKING_URI"] = cluster.url("mlflow", "psycopg2")
    env.setdefault("ORPO_MLFLOW_UI_URL", f"http://{HOST}:{mlflow_port}")  # the report's links
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


def _exited(pid: int) -> bool:
    """Whether the process is gone (a child of ours that exited is reaped here, not a zombie)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child: started by an earlier `orpo serve`
        return not _alive(pid)


def wait_http(url: str, timeout: float = 90.0, service: str | None = None) -> None:
    """Wait until `url` answers; fail at once, with its log's end, when `service` (a name
    `_start` used) has exited."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if service is not None and _exited(int((run_dir() / f"{service}.pid").read_text())):
            log = (run_dir() / f"{service}.log").read_text(errors="replace").splitlines()
            raise RuntimeError(
                f"{service} exited before {url} answered; end of {run_dir() / service}.log:\n"
                + "\n".join(log[-20:])
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status < 500:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _serve_state() -> dict:
    try:
        return json.loads((run_dir() / SERVE_STATE).read_text())
    except (OSError, ValueError):
        return {}


def _anything_running() -> bool:
    return any(_alive(int(p.read_text())) for p in run_dir().glob("*.pid") if p.read_text().strip())


def worker_names(workers: int) -> list[str]:
    """Service (pid/log file) names of the workers: the first keeps the single-worker name."""
    return ["prefect-worker", *(f"prefect-worker-{i}" for i in range(2, workers + 1))]


def serve(
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    db: str = "sqlite",
    workers: int = 1,
    worker_limit: int | None = None,
    pg_port: int | None = None,
) -> None:
    """Start the services (those already running are left as they are). `db`: "sqlite" or
    "postgres"; `workers` process workers on the pool, each taking at most `worker_limit` flow
    runs at once (None: no limit); `pg_port`: the cluster's port (default: the one it had)."""
    if db not in DATABASES:
        raise ValueError(f"db must be one of {', '.join(DATABASES)}, not {db!r}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    before = _serve_state()
    if before and before.get("db", "sqlite") != db and _anything_running():
        raise SystemExit(
            f"orpo serve: already serving on {before['db']} (see {run_dir() / SERVE_STATE}); "
            "run `orpo stop` first to switch to " + db
        )
    cluster = None
    if db == "postgres":
        cluster = Cluster(run_dir())
        try:
            cluster.start(pg_port)
        except PostgresError as err:
            raise SystemExit(f"orpo serve: {err}") from err
    env = _env(prefect_port, mlflow_port, cluster)
    (run_dir() / SERVE_STATE).write_text(
        json.dumps(
            {
                "db": db,
                "prefect_port": prefect_port,
                "mlflow_port": mlflow_port,
                "workers": workers,
                "worker_limit": worker_limit,
                "postgres_port": cluster.port if cluster else None,
            },
            indent=2,
        )
    )
    _start(
        "prefect-server",
        [_bin("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
        env,
    )
    wait_http(f"http://{HOST}:{prefect_port}/api/health", 180, "prefect-server")  # migrates
    subprocess.run(
        [_bin("prefect"), "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    limit = ["--limit", str(worker_limit)] if worker_limit else []
    for i, name in enumerate(worker_names(workers), start=1):
        _start(
            name,
            [_bin("prefect"), "worker", "start", "--pool", WORK_POOL, "--type", "process",
             "--name", f"orpo-worker-{i}", *limit],
            env,
        )  # fmt: skip
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
    wait_http(f"http://{HOST}:{mlflow_port}/health", 180, "mlflow-ui")
    print(
        f"Prefect UI  http://{HOST}:{prefect_port}   (export PREFECT_API_URL={env['PREFECT_API_URL']})"
    )
    print(f"MLflow UI   http://{HOST}:{mlflow_port}")
    if cluster is not None:
        print(
            f"PostgreSQL  {HOST}:{cluster.port} (databases prefect, mlflow; role {ROLE})\n"
            "  for `orpo run`/`orpo train` against these stores:\n"
            f"  export MLFLOW_TRACKING_URI={env['MLFLOW_TRACKING_URI']} PGPASSFILE={cluster.pgpass}"
        )


def stop() -> None:
    names = sorted(p.stem for p in run_dir().glob("prefect-worker*.pid"))
    for name, sig in (
        *((n, signal.SIGINT) for n in names),
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
    cluster = Cluster(run_dir())
    if cluster.initialised:  # after the servers that use it
        try:
            cluster.stop()
        except PostgresError as err:
            print(f"postgres: {err}")
    (run_dir() / SERVE_STATE).unlink(missing_ok=True)


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
