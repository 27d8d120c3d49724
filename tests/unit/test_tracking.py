"""MLflow at the edge: creating an experiment that another run creates at the same moment."""

import pytest
from mlflow.tracking import MlflowClient

from orpo import tracking

pytestmark = pytest.mark.unit


def test_an_experiment_created_by_another_run_meanwhile_is_found_not_an_error(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    other = MlflowClient(uri)
    lookup = MlflowClient.get_experiment_by_name
    calls = []

    def the_other_run_wins(self, name):
        # our lookup finds nothing; the other run creates it before our create call
        calls.append(name)
        if len(calls) == 1:
            other.create_experiment(name)
            return None
        return lookup(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", the_other_run_wins)
    found = tracking.ensure_experiment("raced", uri)
    assert found == lookup(other, "raced").experiment_id
    assert len(calls) == 2  # looked up again after the create was refused


def test_cell_totals_leave_out_phases_a_cell_did_not_go_through():
    from orpo.tracking import cell_totals

    totals = cell_totals({"tokens": 10, "train_seconds": 1.5, "reference_seconds": None})
    assert totals == {"cell/tokens": 10, "cell/train_seconds": 1.5}
