"""Task: train one cell in its own DeepSpeed processes, logging to a child MLflow run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager

import httpx
from prefect import get_run_logger, task
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.runtime import flow_run

from orpo import tracking
from orpo.config import Cell, Experiment
from orpo.pipeline import finished_result, make_job, require_inputs, train_cell
from orpo.training import launch
from orpo.training.job import cell_key
from tasks.common import flow_run_info

# A stop (the flow's cancel/SIGTERM/Ctrl-C path calls launch.stop_live_cells) is for the flow
# run of the calling thread: the flow's and its task threads' prefect.runtime.flow_run.id.
launch.run_scope = lambda: str(flow_run.id or "")

# How long a cell waiting for a slot sleeps between two attempts to take one. Each attempt is a
# single request that either takes a slot or is refused at once (max_retries=0), never one
# that blocks: Prefect's concurrency() with a timeout blocks the task's worker thread, and a
# stopping flow joins its worker threads (ThreadPoolTaskRunner.__exit__ -> shutdown(wait=True)),
# so a long wait made SIGTERM and Ctrl-C hang; and an attempt cut short by its timeout while the
# server was granting it leaves that slot taken by nobody until its lease expires (with one
# slot, every other cell then waits for it).
SLOT_POLL_S = 1.0
LOCKED = 423  # the server's answer when every slot is taken


def _locked(err: BaseException | None) -> bool:
    """The server's refusal because every slot was taken (rather than a failure)."""
    return isinstance(err, httpx.HTTPStatusError) and err.response.status_code == LOCKED


class _QuietSlotAttempts(logging.Filter):
    """Prefect's acquisition service logs each refused attempt as an error ("Service
    'ConcurrencySlotAcquisitionWithLeaseService' failed to process item ..."): one a second
    for as long as a cell waits. Drop those; keep all else it logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) != 2 or args[0] != "ConcurrencySlotAcquisitionWithLeaseService":
            return True
        future = args[1][-1] if isinstance(args[1], tuple) and args[1] else None
        if not (isinstance(future, Future) and future.done() and not future.cancelled()):
            return True
        return not _locked(future.exception())


logging.getLogger("prefect._internal.concurrency").addFilter(_QuietSlotAttempts())


def training_slots(experiment: str) -> str:
    """Name of the global concurrency limit that caps cells training at once."""
    return f"orpo-train-{experiment}"


class SlotTimeout(RuntimeError):
    """No training slot freed in time."""


@contextmanager
def training_slot(exp: Experiment, what: str, log: Callable[[str], None]) -> Iterator[None]:
    """Hold one of the experiment's training slots, saying while it waits, giving up after
    resources.slot_timeout_s with an error that names the limit, and at once (CellStopped)
    when the run is stopping."""
    name, started = training_slots(exp.name), time.monotonic()
    deadline = started + exp.resources.slot_timeout_s
    log(f"{what}: waiting for one of {exp.resources.max_parallel_cells} training slot(s) ({name})")
    with ExitStack() as held:
        while True:  # one quick attempt at a time, so that the wait notices a stop
            if launch.stop_requested():
                raise launch.CellStopped(f"{what}: the run is stopping, stopped waiting for a slot")
            try:
                held.enter_context(concurrency(name, occupy=1, max_retries=0))
                break
            except ConcurrencySlotAcquisitionError as err:
                if not _locked(err.__cause__):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SlotTimeout(
                        f"{what}: no training slot of {name} came free within "
                        f"resources.slot_timeout_s={exp.resources.slot_timeout_s:g} s (every "
                        "slot stayed taken; a run that died holding slots is cleaned up when "
                        "the experiment starts again)"
                    ) from err
                time.sleep(min(SLOT_POLL_S, left))
        log(f"{what}: got a training slot after {time.monotonic() - started:.0f} s")
        yield


@task(name="train-cell", task_run_name="train-{cell.id}")
def train_cell_task(exp: Experiment, cell: Cell, parent_run_id: str) -> str:
    logger = get_run_logger()
    cell_id = cell.id
    job = make_job(exp, cell)
    require_inputs(job)
    tags = {
        "orpo.cell_id": cell_id,
        "orpo.stage": cell.stage,
        "orpo.model": cell.model,
        "orpo.cell_key": cell_key(job),
        **flow_run_info(),
    }
    earlier = finished_result(job)
    if earlier is not None:  # same key: reuse, but still show the cell under this parent run
        tags["orpo.cached_from_run"] = _previous_run_id(job)
    (job.out / "failure.json").unlink(missing_ok=True)
    run_id = None

    def start_run():
        # the MLflow run exists only once the cell starts, so no queued cell shows as RUNNING
        nonlocal run_id, job
        run_id = tracking.create_run(exp.name, cell_id, tags, parent_run_id=parent_run_id)
        job = job.model_copy(
            update={"mlflow_run_id": run_id, "tracking_uri": tracking.default_tracking_uri()}
        )

    try:
        if earlier is not None:
            start_run()
            result = {**earlier, "status": "cached"}
            logger.info("%s: finished earlier with the same key, not retrained", cell_id)
            _log_cached(run_id, job, earlier)
        else:
            with training_slot(exp, cell_id, logger.info):
                start_run()
                result = train_cell(job, on_line=logger.info)
    except Exception as err:
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / "failure.json").write_text(
            json.dumps({"cell_id": cell_id, "error": str(err)[-4000:]})
        )
        if run_id is not None:
            tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    logger.info(
        "%s: %s in %.1f s, best eval loss %.4f",
        cell_id,
        result["status"],
        result["wall_seconds"],
        result["best_eval_loss"],
    )
    return str(job.out)


def _previous_run_id(job) -> str:
    try:
        return json.loads((job.out / "job.json").read_text()).get("mlflow_run_id") or ""
    except (OSError, ValueError):
        return ""


def _log_cached(run_id: str, job, result: dict) -> None:
    sink = tracking.MlflowSink(run_id)
    sink.log_params(job.training_params())
    sink.log_metrics(result["steps"], tracking.cell_totals(result))
    sink.flush()
