"""Faults for tests, injected into training workers from outside the product.

Python imports `sitecustomize` at start-up from the first folder on its path that has one.
Tests that need a cell to fail put this folder on PYTHONPATH and describe the faults in
ORPO_TEST_FAULTS (`tests/faults.py` does both); every process they start inherits the two
variables, down to the DeepSpeed workers that torchrun starts. In a worker process (`python -m
orpo.training.worker JOB.json`) whose cell has a fault, this wraps the training loop:

- `{"nan_at_step": N}`: the training loss of optimizer step N becomes NaN on every rank, as a
  diverging run's would;
- `{"kill_after_step": N}`: every rank exits with `os._exit(1)` (no clean-up, as a crash) right
  after step N's metrics are logged.

Every other process, and a worker without ORPO_TEST_FAULTS, is left alone (nothing imported).
"""

import json
import os
import sys

FAULTS_ENV = "ORPO_TEST_FAULTS"  # the same name as tests/faults.py


def _worker_cell_id() -> str | None:
    argv = list(getattr(sys, "orig_argv", []))
    if "orpo.training.worker" not in argv:
        return None
    args = argv[argv.index("orpo.training.worker") + 1 :]
    if len(args) != 1:
        return None
    with open(args[0]) as f:
        return json.load(f)["cell"]["id"]


def _install(fault: dict) -> None:
    import torch

    import orpo.training.loop as loop

    # The worker runs as __main__ and imports run_loop from the loop module after this file
    # ran: replacing it there is what the worker gets.
    original_run_loop = loop.run_loop

    def run_loop(engine, data, obj_cfg, loop_cfg, sink, log, ref=None, progress=None, turns=None):
        logged = {"step": 0}  # the last step whose metrics were logged (0: the step-0 eval)

        class FaultySink:
            def __getattr__(self, name):
                return getattr(sink, name)

            def log_metrics(self, step, metrics):
                sink.log_metrics(step, metrics)
                logged["step"] = step
                if fault.get("kill_after_step") == step:
                    os._exit(1)

        objective = loop.OBJECTIVES[obj_cfg.stage]

        def faulty_objective(*args, **kwargs):
            loss, stats = objective(*args, **kwargs)
            if torch.is_grad_enabled() and fault.get("nan_at_step") == logged["step"] + 1:
                loss = loss * float("nan")
                stats = {**stats, "loss": loss.detach()}
            return loss, stats

        loop.OBJECTIVES[obj_cfg.stage] = faulty_objective
        try:
            return original_run_loop(
                engine, data, obj_cfg, loop_cfg, FaultySink(), log, ref, progress, turns
            )
        finally:
            loop.OBJECTIVES[obj_cfg.stage] = objective

    loop.run_loop = run_loop


def _main() -> None:
    faults = json.loads(os.environ.get(FAULTS_ENV) or "{}")
    if not faults:
        return
    cell_id = _worker_cell_id()
    if cell_id in faults:
        _install(faults[cell_id])


_main()
