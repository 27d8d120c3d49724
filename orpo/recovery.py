"""At the start of a run: clean up after earlier runs of the same experiment that died.

What a dead run leaves behind, and what happens to it here (see `orpo.live_runs` for how a dead
run is recognised):
- its Prefect flow run, still "Running": set to Crashed, with the reason;
- its MLflow parent and cell runs, still RUNNING: set to FAILED, reason in `orpo.failure_reason`;
- the training slots it held in the experiment's global concurrency limit: when no other run of
  the experiment is alive, every occupied slot is a leftover, and the limit is reset to empty.
  With another live run (a second `orpo run`, a deployment run on this host), its slots are real
  and nothing is reclaimed; a slot that really leaked then frees when its lease times out.
"""

from __future__ import annotations

from collections.abc import Callable

from orpo import live_runs, tracking


def crash_dead_runs(experiment: str, log: Callable[[str], None]) -> int:
    """Mark the Prefect and MLflow records of the experiment's dead runs; returns how many."""
    from prefect import get_client
    from prefect.states import Crashed

    dead = live_runs.dead_runs(experiment)
    if not dead:
        return 0  # the usual start: no server calls
    reason = "its process died without ending the run (found by a later run of the experiment)"
    with get_client(sync_client=True) as client:
        for run in dead:
            try:
                state = client.read_flow_run(run.flow_run_id).state
            except Exception:  # noqa: BLE001 - another server's run (a temporary API): gone
                state = None
            if state is not None and not state.is_final():
                client.set_flow_run_state(run.flow_run_id, Crashed(message=reason), force=True)
            failed = tracking.fail_runs_of_flow_run(experiment, run.flow_run_id, reason)
            log(
                f"earlier run {run.flow_run_id} (pid {run.pid}) died: marked crashed, "
                f"{len(failed)} MLflow run(s) marked failed"
            )
    return len(dead)


def reclaim_slots(experiment: str, flow_run_id: str, limit_name: str, log) -> int:
    """Empty the experiment's concurrency limit when no other run of it is alive; returns the
    number of slots reclaimed."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    if live_runs.others_alive(experiment, flow_run_id):
        return 0
    with get_client(sync_client=True) as client:
        held = client.read_global_concurrency_limit_by_name(limit_name).active_slots
        if held:
            client.update_global_concurrency_limit(
                limit_name, GlobalConcurrencyLimitUpdate(active_slots=0)
            )
            log(f"reclaimed {held} training slot(s) of {limit_name} left by a dead run")
    return held
