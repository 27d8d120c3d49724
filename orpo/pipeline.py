"""From a planned cell to a finished one, without Prefect: resolve the job (paths, inputs, the
cache key), skip it when an identical job already finished, else launch it and read its result.
The Prefect tasks and `orpo train` are thin wrappers over these functions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from orpo import paths, store
from orpo.config import POLICY_STAGES, Cell, Experiment, LoraConfig, cell_id, optim_for
from orpo.methods import starts_from_sft
from orpo.sources import resolve_source
from orpo.training.job import CellJob, cell_key
from orpo.training.launch import run_cell


def init_checkpoint(exp: Experiment, cell: Cell) -> str | None:
    """The model folder a cell starts from: DPO (and every method the registry starts from
    SFT) from its SFT cell, the others from the pretrained base when there is one, else from
    the model itself (preset or hub)."""
    if starts_from_sft(cell.stage):
        source = cell_id("sft", cell.model, cell.seed)
    elif cell.stage != "pretrain" and exp.pretrain is not None and exp.pretrain.enabled:
        source = cell_id("pretrain", exp.pretrain_model(cell.model), cell.seed)
    else:
        return None
    return str(paths.cell_dir(exp.name, source) / "model")


def starting_point(exp: Experiment, cell: Cell) -> str:
    """The weights a cell starts from: its input checkpoint, else the model itself (a preset
    name, a hub id, or a folder; GGUF files as their dequantised folder)."""
    return init_checkpoint(exp, cell) or resolve_source(exp.model_path(cell.model))


def make_job(
    exp: Experiment,
    cell: Cell,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> CellJob:
    return CellJob(
        experiment=exp.name,
        cell=cell,
        model=resolve_source(exp.model_path(cell.model)),
        init_from=init_checkpoint(exp, cell),
        data_dir=str(paths.data_dir(exp.name)),
        out_dir=str(paths.cell_dir(exp.name, cell.id)),
        optim=optim_for(exp, cell.stage),
        resources=exp.resources,
        nll_scope=exp.nll_scope,
        max_length=exp.data.max_length,
        max_prompt_length=exp.data.max_prompt_length,
        ref_cache_dir=str(paths.runs_dir(exp.name) / "ref_cache"),
        mlflow_run_id=mlflow_run_id,
        tracking_uri=tracking_uri,
        trust_remote_code=exp.trust_remote_code,
        keep_dropout=exp.keep_dropout,
        lora=lora_for(exp, cell),
    )


def lora_for(exp: Experiment, cell: Cell) -> LoraConfig | None:
    """The LoRA settings of a policy cell whose model entry says `finetuning: lora`; None for
    full fine-tuning, and always for pretraining and the reward model (every weight trains)."""
    if cell.stage in POLICY_STAGES and exp.finetuning(cell.model) == "lora":
        return exp.lora
    return None


def require_inputs(job: CellJob) -> None:
    """A clear error, before anything starts, when the checkpoint a cell starts from is missing."""
    if Path(job.model).is_absolute() and not Path(job.model).is_dir():
        raise FileNotFoundError(
            f"cell {job.cell.id}: model folder {job.model} is missing (a GGUF model is "
            "dequantised when the experiment's data are prepared: run `orpo run` or `orpo train`)"
        )
    if job.init_from and not Path(job.init_from).is_dir():
        raise FileNotFoundError(
            f"cell {job.cell.id}: input checkpoint {job.init_from} is missing "
            "(train the cell it depends on first)"
        )


def finished_result(job: CellJob) -> dict | None:
    """The result of an earlier run of exactly this job (same key), if there is one.

    First points the cell's folder (`job.out`, a view) at the store entry of this key, creating
    it, and moves a real folder in its place into the store (`orpo.store`): from here on,
    whatever is written to `job.out` (the run, its failure.json) belongs to this key, and the
    results of other keys stay untouched in their own entries."""
    key = cell_key(job)
    entry = store.open_entry(job, key)
    if not store.is_finished(entry):
        return None
    result = json.loads((entry / "result.json").read_text())
    return result if result.get("key") == key else None


def train_cell(
    job: CellJob, on_line: Callable[[str], None] = print, extra_env: dict[str, str] | None = None
) -> dict:
    """Run the job unless an identical one finished; returns its result.json content.

    The job runs in the store entry of its key (through its view `job.out`): a new key trains
    into a new entry and never touches an earlier one; partial checkpoints there are resumed,
    which is safe because they are of the same key."""
    require_inputs(job)
    key = cell_key(job)
    if (done := finished_result(job)) is not None:
        on_line(f"{job.cell.id}: cached (key {key}), not retrained")
        return {**done, "status": "cached"}
    entry = store.entry_dir(job.out, key)  # where finished_result pointed the view
    (entry / "result.json").unlink(missing_ok=True)  # a result without its model: not finished
    (entry / store.KEY_FILE).write_text(key)
    on_line(f"{job.cell.id}: training in {entry} (key {key})")
    job.write()
    run_cell(job, on_line, extra_env=extra_env)
    store.mark_finished(entry)
    return json.loads((entry / "result.json").read_text())
