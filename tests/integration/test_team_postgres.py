"""The team set-up for real: `orpo serve --db postgres --workers 2` (the Prefect server and the
MLflow tracking store on a local PostgreSQL cluster in `.run/postgres/`), `prefect deploy`, and
two deployment runs of one experiment in flight at once, one per process worker on one pool.

Checked, from the databases themselves (PostgreSQL, queried directly: the records are there,
not in SQLite): both flow runs Completed, each submitted by its own worker; both runs' MLflow
parents and cell runs FINISHED; the experiment's global training limit held across the two runs
(never more cells training at once than `resources.max_parallel_cells`), and it was contended:
a cell of one run waited for a slot while the other run's cells held every slot.

Skipped, with the reason printed, where PostgreSQL is not installed, except under
ORPO_REQUIRE_POSTGRES=1 (`make test`, after `make postgresql`), where that is a failure.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from orpo.postgres import HOST, ROLE, missing_reason
from orpo.training.launch import free_port
from tests.micro import MICRO
from tests.requirements import require

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXPERIMENT = MICRO["name"]
LIMIT = MICRO["resources"]["max_parallel_cells"]
SEEDS = (0, 1)  # one run per seed: the two runs share no cell (and no cell folder)


@pytest.fixture(scope="module")
def team():
    require("POSTGRES", missing_reason())
    # Not under pytest's tmp folder: that is 0700 root's, and as root the cluster's server runs
    # as the user `postgres`, which has to reach <home>/.run/postgres/.
    home = Path(tempfile.mkdtemp(prefix="orpo-team-"))
    home.chmod(0o711)
    prefect_port, mlflow_port, pg_port = free_port(), free_port(), free_port()
    outcome = []  # the test appends True when it passed
    env = dict(
        os.environ,
        ORPO_HOME=str(home),
        PREFECT_HOME=str(home / ".prefect"),
        ORPO_REPO=str(REPO),
        PREFECT_API_URL=f"http://{HOST}:{prefect_port}/api",
        PREFECT_WORKER_QUERY_SECONDS="2",  # workers poll every 2 s, not 10
    )
    for name in ("PREFECT_PROFILES_PATH", "MLFLOW_TRACKING_URI", "PGPASSFILE",
                 "PREFECT_API_DATABASE_CONNECTION_URL"):  # fmt: skip
        env.pop(name, None)
    try:
        subprocess.run(
            [BIN / "orpo", "serve", "--db", "postgres", "--workers", "2", "--worker-limit", "1",
             "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port),
             "--pg-port", str(pg_port)],
            env=env, check=True, cwd=REPO, timeout=300,
        )  # fmt: skip
        yield home, env, pg_port, outcome
    finally:
        subprocess.run([BIN / "orpo", "stop"], env=env, cwd=REPO, timeout=180)
        if outcome:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"kept for inspection (the test did not pass): {home}")


def prefect(env, *args, timeout=120):
    return subprocess.run(
        [BIN / "prefect", *args], env=env, cwd=REPO, timeout=timeout, capture_output=True, text=True
    )


def query(home, port, database, sql, *params):
    import psycopg2

    conn = psycopg2.connect(
        host=HOST, port=port, user=ROLE, dbname=database,
        passfile=str(home / ".run" / "postgres.pgpass"),
    )  # fmt: skip
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def test_two_deployment_runs_at_once_on_postgres(team):
    home, env, pg_port, outcome = team
    run_dir = home / ".run"
    # the cluster: loopback only, password auth (no password, no connection), no SQLite store
    listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
    pg_lines = [line for line in listening.splitlines() if f":{pg_port} " in line]
    assert pg_lines and all(f"{HOST}:{pg_port}" in line for line in pg_lines), pg_lines
    assert (run_dir / "postgres.pgpass").stat().st_mode & 0o077 == 0
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="password"):
        psycopg2.connect(
            host=HOST,
            port=pg_port,
            user=ROLE,
            dbname="mlflow",
            passfile=str(home / "no-such-pgpass"),
        ).close()

    deployed = prefect(env, "--no-prompt", "deploy", "--all")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    micro = home / "micro.yaml"
    micro.write_text(yaml.safe_dump(MICRO))

    def trigger(seed):
        return subprocess.Popen(
            [BIN / "prefect", "deployment", "run", "orpo-ablation/smoke",
             "--param", f"experiment_file={micro}", "--param", f"seeds=[{seed}]",
             "--watch", "--watch-timeout", "600"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    # The second run starts once the first has prepared the experiment's data (and so created
    # its MLflow experiment): two runs of one experiment both preparing runs/<exp>/data at the
    # same moment race on one temporary folder (orpo.data.prepare), as both creating the MLflow
    # experiment do (tracking.ensure_experiment). Training, evaluation and the shared slots
    # then overlap fully.
    started = time.time()
    first = trigger(SEEDS[0])
    manifest = home / "runs" / EXPERIMENT / "data" / "manifest.json"
    while not manifest.is_file():
        assert first.poll() is None, first.communicate()[0][-4000:]
        assert time.time() - started < 300, "the first run prepared no data within 300 s"
        time.sleep(0.5)
    second = trigger(SEEDS[1])
    outputs = [proc.communicate(timeout=900)[0] for proc in (first, second)]
    print(f"both runs finished {time.time() - started:.0f} s after the first was triggered")
    for proc, out in zip((first, second), outputs, strict=True):
        assert proc.returncode == 0 and "Completed" in out, out[-4000:] + _logs(run_dir)
    flow_runs = [re.search(r"UUID: ([0-9a-f-]{36})", out).group(1) for out in outputs]

    # Prefect's records are in PostgreSQL: both Completed, each submitted by its own worker
    states = dict(
        query(home, pg_port, "prefect", "SELECT id::text, state_type FROM flow_run WHERE id::text"
              " = ANY(%s)", flow_runs)
    )  # fmt: skip
    assert states == {fr: "COMPLETED" for fr in flow_runs}
    submitted = {log.name: _submitted(log) for log in run_dir.glob("prefect-worker*.log")}
    assert sorted(submitted) == ["prefect-worker-2.log", "prefect-worker.log"]
    assert sorted(sum(submitted.values(), [])) == sorted(flow_runs), submitted
    assert all(len(ids) == 1 for ids in submitted.values()), submitted
    limit = query(home, pg_port, "prefect", 'SELECT "limit", active_slots FROM '
                  "concurrency_limit_v2 WHERE name = %s", f"orpo-train-{EXPERIMENT}")  # fmt: skip
    assert limit == [(LIMIT, 0)]  # one limit for both runs, every slot given back

    # MLflow's records are in PostgreSQL: a parent per flow run, a finished cell run per cell
    runs = query(
        home, pg_port, "mlflow",
        """SELECT r.run_uuid, r.name, r.status, r.start_time,
                  (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid
                     AND t.key = 'prefect.flow_run_id'),
                  (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid
                     AND t.key = 'mlflow.parentRunId'),
                  (SELECT value FROM tags t WHERE t.run_uuid = r.run_uuid
                     AND t.key = 'orpo.cached_from_run'),
                  (SELECT max(m.timestamp) FROM metrics m WHERE m.run_uuid = r.run_uuid
                     AND m.key LIKE 'cell/%%')
           FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id
           WHERE e.name = %s""",
        EXPERIMENT,
    )  # fmt: skip
    parents = {r[0]: r for r in runs if r[5] is None}
    assert sorted(p[4] for p in parents.values()) == sorted(flow_runs)
    assert all(p[2] == "FINISHED" for p in parents.values()), f"{parents}{_logs(run_dir)}"
    cells = [r for r in runs if r[5] is not None]
    expected = {
        f"{cell}-s{seed}"
        for seed in SEEDS
        for cell in ("rm-opt-tiny", "sft-opt-tiny", "dpo-opt-tiny-b0.1", "orpo-opt-tiny-l0.5")
    }
    assert sorted(c[1] for c in cells) == sorted(expected)
    for _, name, status, _, flow_run_id, parent, cached, trained_until in cells:
        assert status == "FINISHED" and cached is None and trained_until, name
        assert parents[parent][4] == flow_run_id, name  # under its own run's parent
    assert not (home / "mlflow.db").exists() and not (home / ".prefect" / "prefect.db").exists()

    # The limit held across both runs. A cell trains from the creation of its MLflow run (once
    # it holds a slot) to its training process's last metrics (the cell/<total> ones, logged
    # before that process exits and the slot is given back; the report task logs its evaluation
    # metrics to cell runs later): never more than LIMIT such spans overlap.
    spans = {c[1]: (c[3], c[7], c[4]) for c in cells}  # name -> (start ms, end ms, flow run)
    assert _peak(spans.values()) <= LIMIT, spans
    # ... and it bound across the runs: some cell waited for a slot (from its task's start)
    # while LIMIT cells were training, at least one of them the other run's. With a limit per
    # run instead of one shared limit, that cell would have had a free slot.
    tasks = query(
        home, pg_port, "prefect",
        "SELECT name, flow_run_id::text, start_time FROM task_run WHERE name LIKE 'train-%%' "
        "AND flow_run_id::text = ANY(%s)",
        flow_runs,
    )  # fmt: skip
    waits = {n.removeprefix("train-"): (t.timestamp() * 1000, fr) for n, fr, t in tasks}
    assert set(waits) == expected

    def training(t) -> list[str]:
        return [other for s, e, other in spans.values() if s <= t < e]

    assert any(
        len(training(t)) == LIMIT and any(other != run for other in training(t))
        for cell, (waited_from, run) in waits.items()
        for t in [waited_from, *(s for s, _, _ in spans.values())]
        if waited_from <= t < spans[cell][0]
    ), (waits, spans)
    outcome.append(True)


def _peak(spans) -> int:
    """Most spans (start, end, _) open at one time; one ending as another starts: not both."""
    events = sorted((t, step) for s, e, _ in spans for t, step in ((s, 1), (e, -1)))
    peak = now = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _submitted(worker_log: Path) -> list[str]:
    """The flow runs a worker started. Two workers polling at once may both try one run: the
    server lets one have it, and tells the other it aborted ("Aborted submission of ...")."""
    text = worker_log.read_text()
    tried = re.findall(r"submitting flow run '([0-9a-f-]{36})'", text)
    aborted = set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))
    return [fr for fr in tried if fr not in aborted]


def _logs(run_dir: Path) -> str:
    tails = []
    for log in sorted(run_dir.glob("*.log")):
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        tails.append(f"\n--- {log.name}\n" + "\n".join(lines[-60:]))
    return "".join(tails)
