"""Which runs of an experiment are alive, so a re-run can clean up after one that died.

A killed `orpo run` (kill -9, an OOM kill, a lost machine) leaves three things claiming to be
busy: the experiment's training slots in Prefect's global concurrency limit (the temporary local
API keeps leases in memory, so nothing ever expires them), its Prefect flow run ("Running"), and
its MLflow runs (RUNNING). Neither server can tell that the process is gone.

Each flow run of an experiment therefore registers itself in `runs/<exp>/live/<flow run id>.json`
with its host and process id, and removes the file when it ends, however it ends short of being
killed. At the start of the next run, an entry whose process no longer exists on this host is
a dead run: `dead_runs` returns it (and deletes its file) so the flow can mark its records
crashed and reclaim its slots. An entry from another host is never judged dead from here: on a
team set-up those runs expire through Prefect's own lease timeouts instead.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from orpo import paths


@dataclass(frozen=True)
class LiveRun:
    flow_run_id: str
    host: str
    pid: int
    mlflow_parent_run_id: str | None = None


def _folder(experiment: str) -> Path:
    return paths.runs_dir(experiment) / "live"


def register(experiment: str, flow_run_id: str, mlflow_parent_run_id: str | None) -> Path:
    """Record this process as the live run `flow_run_id` of the experiment."""
    entry = LiveRun(flow_run_id, socket.gethostname(), os.getpid(), mlflow_parent_run_id)
    path = _folder(experiment) / f"{flow_run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(entry.__dict__))
    tmp.replace(path)
    return path


def unregister(experiment: str, flow_run_id: str) -> None:
    (_folder(experiment) / f"{flow_run_id}.json").unlink(missing_ok=True)


def _entries(experiment: str) -> list[tuple[Path, LiveRun]]:
    found = []
    for path in sorted(_folder(experiment).glob("*.json")):
        try:
            found.append((path, LiveRun(**json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError):
            continue  # a half-written entry of a run killed while registering: not a run
    return found


def _alive(entry: LiveRun) -> bool:
    if entry.host != socket.gethostname():
        return True  # cannot tell from here; see the module docstring
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def dead_runs(experiment: str) -> list[LiveRun]:
    """Registered runs of the experiment whose process is gone; their entries are removed."""
    dead = []
    for path, entry in _entries(experiment):
        if not _alive(entry):
            dead.append(entry)
            path.unlink(missing_ok=True)
    return dead


def others_alive(experiment: str, flow_run_id: str) -> list[LiveRun]:
    """Live runs of the experiment other than `flow_run_id`."""
    return [e for _, e in _entries(experiment) if e.flow_run_id != flow_run_id and _alive(e)]
