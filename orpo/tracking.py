"""MLflow at the edge: the metrics sink the training loop writes to, and the run plumbing.

The loop never imports mlflow: it calls `sink.log_metrics(step, {...})`. Rank 0 gets an
`MlflowSink` bound to a run id handed in (MLflow's active run is thread-local, so ids are passed
explicitly); other ranks get `NullSink`. Metrics are buffered and sent with one `log_batch` per
flush (1000 single `log_metric` calls cost ~7 s on SQLite, one batch ~0.25 s).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from orpo.paths import project_home
from orpo.report.tables import CELL_TOTALS
from orpo.timing import CELL_PHASES

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_home() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return (project_home() / "mlartifacts").as_uri()


def flatten(config: Mapping, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; lists become JSON. One name per quantity: keys are the
    config's own field names (orpo_lambda, dpo_beta), never renamed on the way to MLflow."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            out[name] = text[:MAX_PARAM_CHARS]
    return out


# The results contract's per-cell totals, plus the training time alone (start-up excluded).
CELL_METRICS = (*CELL_TOTALS, *CELL_PHASES)


def cell_totals(result: Mapping) -> dict[str, float]:
    """A cell's totals from its result.json as the MLflow metrics `cell/<name>` (a phase the
    cell did not go through, None there, is not logged)."""
    return {f"cell/{k}": result[k] for k in CELL_METRICS if result.get(k) is not None}


class NullSink:
    """Sink for ranks other than 0 and for runs without tracking."""

    def log_params(self, params: Mapping) -> None: ...
    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def flush(self) -> None: ...
    def on_resume(self, step: int) -> None: ...


class JsonlSink(NullSink):
    """Per-step metrics in the cell folder (one JSON object per line), independent of MLflow.
    On resume, lines after the checkpoint's step are dropped so the file holds one curve."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def on_resume(self, step: int) -> None:
        if self.path.is_file():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))


class TeeSink:
    """Fan every call out to several sinks."""

    def __init__(self, sinks: list):
        self.sinks = sinks

    def __getattr__(self, name: str):
        def call(*args, **kwargs):
            for sink in self.sinks:
                getattr(sink, name)(*args, **kwargs)

        return call


class MlflowSink(NullSink):
    def __init__(self, run_id: str, tracking_uri: str | None = None, flush_at: int = 200):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri or default_tracking_uri())
        self.run_id = run_id
        self.flush_at = flush_at  # buffered metric points that trigger a log_batch
        self._buffer: list = []

    def log_params(self, params: Mapping) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # log_batch accepts at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer += [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if len(self._buffer) >= self.flush_at:
            self.flush()

    def flush(self) -> None:
        for i in range(0, len(self._buffer), 1000):  # log_batch's metric limit per call
            self.client.log_batch(self.run_id, metrics=self._buffer[i : i + 1000])
        self._buffer = []

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)


def ensure_experiment(name: str, tracking_uri: str | None = None) -> str:
    """Create the MLflow experiment once, before any fan-out (concurrent first-time creation and
    SQLite migrations race)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or default_tracking_uri())
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(
            name, artifact_location=default_artifact_root() + f"/{name}"
        )
    except MlflowException as err:
        # two runs of one experiment starting together (a team's server): the other created it
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def create_run(
    experiment: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or default_tracking_uri())
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(
        ensure_experiment(experiment, tracking_uri), run_name=run_name, tags=all_tags
    )
    return run.info.run_id


def end_run(run_id: str, status: str = "FINISHED", tracking_uri: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri or default_tracking_uri()).set_terminated(run_id, status)


def download_latest_results(experiment: str, dest: Path) -> Path | None:
    """The `results/` artifacts (tidy tables + meta.json) of the experiment's latest parent
    run, downloaded into `dest`; None when MLflow has none."""
    import shutil

    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        "tags.`orpo.experiment_file` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=20,
    )
    for run in runs:
        if any(a.path == "results" for a in client.list_artifacts(run.info.run_id)):
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            client.download_artifacts(run.info.run_id, "results", str(dest))
            return dest / "results"
    return None


def fail_runs_of_flow_run(experiment: str, flow_run_id: str, reason: str) -> list[str]:
    """Mark every MLflow run of the experiment still RUNNING under `flow_run_id` (the parent and
    its cells) FAILED, with the reason as the `orpo.failure_reason` tag; returns their ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri())
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'",
        max_results=10_000,
    )
    for run in runs:
        client.set_tag(run.info.run_id, "orpo.failure_reason", reason)
        client.set_terminated(run.info.run_id, "FAILED")
    return [run.info.run_id for run in runs]
