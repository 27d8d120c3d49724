"""A run of an experiment whose process died is told apart from a live one."""

import json
import socket
import subprocess
import sys

import pytest

from orpo import live_runs, paths

pytestmark = pytest.mark.unit


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    return tmp_path


def _write(experiment, flow_run_id, pid, host=None):
    folder = paths.runs_dir(experiment) / "live"
    folder.mkdir(parents=True, exist_ok=True)
    entry = {"flow_run_id": flow_run_id, "host": host or socket.gethostname(), "pid": pid}
    (folder / f"{flow_run_id}.json").write_text(json.dumps(entry))


def test_a_dead_process_is_a_dead_run_and_is_forgotten(home):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write("exp", "dead-run", gone.pid)
    live_runs.register("exp", "me", "mlflow-parent")
    _write("exp", "elsewhere", gone.pid, host="another-host")  # cannot be judged from here
    assert [r.flow_run_id for r in live_runs.dead_runs("exp")] == ["dead-run"]
    assert live_runs.dead_runs("exp") == []  # its entry is gone
    assert [r.flow_run_id for r in live_runs.others_alive("exp", "me")] == ["elsewhere"]
    live_runs.unregister("exp", "me")
    assert [r.flow_run_id for r in live_runs.others_alive("exp", "x")] == ["elsewhere"]


def test_a_half_written_entry_is_not_a_run(home):
    folder = paths.runs_dir("exp") / "live"
    folder.mkdir(parents=True)
    (folder / "torn.json").write_text('{"flow_run_id": "to')
    assert live_runs.dead_runs("exp") == [] and live_runs.others_alive("exp", "me") == []
