"""Cell storage by content (`orpo.store`): a changed knob never overwrites an earlier result,
changing it back reuses it, pre-store folders are moved (not lost), `orpo runs` lists the
entries and `orpo prune` deletes only those no cell folder points at.

Training is faked: `orpo.pipeline.run_cell` is replaced by a function that writes what a worker
leaves (metrics.jsonl, model/, result.json with the key) into the job's folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from orpo import live_runs, paths, store
from orpo.cli import main
from orpo.config import expand_cells, parse_experiment, set_override
from orpo.pipeline import finished_result, make_job, train_cell
from orpo.training.job import cell_key
from orpo.training.launch import CellFailed
from tests.micro import MICRO

pytestmark = pytest.mark.unit

SFT = "sft-opt-tiny-s0"
DPO = "dpo-opt-tiny-b0.1-s0"


class FakeTraining:
    """Stands in for the launcher: records each call and writes a worker's outputs."""

    def __init__(self):
        self.calls: list[dict] = []
        self.fail_next = False

    def __call__(self, job, on_line=print, extra_env=None):
        out = job.out
        self.calls.append(
            {"cell": job.cell.id, "lr": job.optim.lr, "resumed": (out / "checkpoints").is_dir()}
        )
        (out / "checkpoints" / "step2").mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").write_text(json.dumps({"step": 1, "lr": job.optim.lr}) + "\n")
        if self.fail_next:
            self.fail_next = False
            raise CellFailed(f"cell {job.cell.id} exited with code 1")
        (out / "model").mkdir(exist_ok=True)
        (out / "model" / "model.safetensors").write_text(f"weights lr={job.optim.lr}")
        (out / "model" / "config.json").write_text("{}")
        shutil.rmtree(out / "checkpoints")
        result = {"cell_id": job.cell.id, "key": cell_key(job), "status": "completed"}
        (out / "result.json").write_text(json.dumps({**result, "lr": job.optim.lr}))


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    fake = FakeTraining()
    monkeypatch.setattr("orpo.pipeline.run_cell", fake)
    data = paths.data_dir("micro")
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text('{"id": "a"}\n')
    return fake


def job_for(cell: str, **overrides):
    raw = json.loads(json.dumps(MICRO))
    for key, value in overrides.items():
        set_override(raw, key, value)
    exp = parse_experiment(raw)
    return make_job(exp, {c.id: c for c in expand_cells(exp)}[cell])


def train(cell: str = SFT, **overrides) -> dict:
    return train_cell(job_for(cell, **overrides), on_line=lambda line: None)


def view(cell: str = SFT) -> Path:
    return paths.cell_dir("micro", cell)


def entry_of(job) -> Path:
    return paths.store_dir("micro") / job.out.name / cell_key(job)


# --- a changed knob, and back ------------------------------------------------------------------


def test_a_changed_knob_trains_into_a_new_entry_and_keeps_the_old_one(lab):
    first = job_for(SFT, **{"sft.lr": 1e-3})
    assert train(**{"sft.lr": 1e-3})["lr"] == 1e-3
    old = entry_of(first)
    assert view().is_symlink() and not os.path.isabs(os.readlink(view()))  # relative
    assert view().resolve() == old.resolve()
    before = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}

    second = job_for(SFT, **{"sft.lr": 2e-3})
    assert cell_key(second) != cell_key(first)
    assert train(**{"sft.lr": 2e-3})["lr"] == 2e-3
    assert len(lab.calls) == 2
    new = entry_of(second)
    assert view().resolve() == new.resolve() != old.resolve()
    # the earlier result is intact, byte for byte (entry.json aside: its own metadata)
    after = {p.relative_to(old): p.read_bytes() for p in old.rglob("*") if p.is_file()}
    assert after == before
    assert json.loads((view() / "result.json").read_text())["lr"] == 2e-3
    meta = json.loads((new / store.ENTRY_FILE).read_text())
    assert meta["key"] == cell_key(second) and meta["cell_id"] == SFT and meta["finished"]
    assert meta["experiment"] == "micro" and meta["created"]
    # readers that glob cell folders (tasks/report.py's job.json scan) see through the view
    found = sorted((paths.runs_dir("micro") / "cells").glob("*/job.json"))
    assert [p.parent.name for p in found] == [SFT]


def test_changing_it_back_reuses_the_earlier_entry_without_training(lab):
    train(**{"sft.lr": 1e-3})
    train(**{"sft.lr": 2e-3})
    assert len(lab.calls) == 2

    back = train(**{"sft.lr": 1e-3})
    assert back["status"] == "cached" and back["lr"] == 1e-3
    assert len(lab.calls) == 2  # no training
    assert view().resolve() == entry_of(job_for(SFT, **{"sft.lr": 1e-3})).resolve()

    # the Prefect task asks finished_result first: it re-points the view as well
    job = job_for(SFT, **{"sft.lr": 2e-3})
    assert finished_result(job)["lr"] == 2e-3
    assert json.loads((view() / "result.json").read_text())["lr"] == 2e-3
    assert len(lab.calls) == 2


def test_partial_checkpoints_resume_only_under_their_own_key(lab):
    lab.fail_next = True
    with pytest.raises(CellFailed):
        train(**{"sft.lr": 1e-3})
    partial = entry_of(job_for(SFT, **{"sft.lr": 1e-3}))
    assert (partial / "checkpoints").is_dir() and not (partial / "result.json").exists()

    train(**{"sft.lr": 2e-3})  # another key: starts fresh, in its own entry
    assert lab.calls[-1] == {"cell": SFT, "lr": 2e-3, "resumed": False}
    assert (partial / "checkpoints").is_dir()  # the other key's checkpoints are left alone

    train(**{"sft.lr": 1e-3})  # the same key again: resumes
    assert lab.calls[-1] == {"cell": SFT, "lr": 1e-3, "resumed": True}


def test_a_dpo_cell_follows_its_sft_view_and_its_content(lab):
    train(**{"sft.lr": 1e-3})
    dpo_1 = job_for(DPO, **{"sft.lr": 1e-3})
    assert dpo_1.init_from == str(view() / "model")
    key_1 = cell_key(dpo_1)
    train(DPO, **{"sft.lr": 1e-3})
    train(**{"sft.lr": 2e-3})  # the SFT view now shows other weights
    assert cell_key(job_for(DPO, **{"sft.lr": 2e-3})) != key_1
    assert train(DPO, **{"sft.lr": 2e-3})["status"] == "completed"
    train(**{"sft.lr": 1e-3})  # back: the SFT entry, then the DPO entry, are reused
    assert train(DPO, **{"sft.lr": 1e-3})["status"] == "cached"
    assert len(lab.calls) == 4


def test_a_job_in_another_folder_trains_there_even_with_the_same_key(lab):
    """A job copied to `<cell>-resume` (as the integration tests and benchmarks do) keeps its
    key: it must train in its own folder, not find the original's result."""
    train()
    job = job_for(SFT)
    copy = job.model_copy(update={"out_dir": f"{job.out_dir}-resume"})
    assert cell_key(copy) == cell_key(job)
    assert train_cell(copy, on_line=lambda line: None)["status"] == "completed"
    assert len(lab.calls) == 2
    assert copy.out.resolve().parent.name == f"{SFT}-resume"
    assert view().resolve() != copy.out.resolve()


def test_the_runs_folder_can_move(lab, tmp_path, monkeypatch):
    train()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(str(tmp_path / "runs"), str(moved / "runs"))
    monkeypatch.setenv("ORPO_HOME", str(moved))
    assert (view() / "model").is_dir()
    assert train()["status"] == "cached"


# --- folders from before the store ------------------------------------------------------------


def _legacy_folder(key: str | None, lr: float) -> Path:
    folder = view()
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "model.safetensors").write_text(f"weights lr={lr}")
    (folder / "samples.jsonl").write_text('{"text": "an evaluated sample"}\n')
    if key:
        (folder / "key").write_text(key)
    result = {"cell_id": SFT, "key": key, "status": "completed", "lr": lr}
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def test_a_legacy_folder_with_the_current_key_is_moved_and_reused(lab):
    key = cell_key(job_for(SFT))
    _legacy_folder(key, 1e-3)
    assert train()["status"] == "cached" and not lab.calls
    assert view().is_symlink()
    entry = paths.store_dir("micro") / SFT / key
    assert view().resolve() == entry.resolve()
    assert (entry / "samples.jsonl").read_text() == '{"text": "an evaluated sample"}\n'
    assert json.loads((entry / store.ENTRY_FILE).read_text())["migrated_from"] == str(view())


@pytest.mark.parametrize("old_key", ["0123456789abcdef", None])
def test_a_legacy_folder_of_another_key_is_kept_beside_the_new_entry(lab, old_key):
    _legacy_folder(old_key, 5e-4)
    result = train()
    assert result["status"] == "completed" and len(lab.calls) == 1
    entries = store.list_entries("micro")
    assert len(entries) == 2
    (kept,) = [e for e in entries if not e.current]
    assert kept.path.name == (old_key or kept.path.name)
    assert old_key or kept.path.name.startswith("legacy-")
    assert (kept.path / "model" / "model.safetensors").read_text() == "weights lr=0.0005"
    assert (kept.path / "samples.jsonl").is_file()
    assert view().resolve() == entry_of(job_for(SFT)).resolve()


def test_an_empty_legacy_folder_is_replaced_by_the_view(lab):
    view().mkdir(parents=True)
    train()
    assert view().is_symlink() and len(store.list_entries("micro")) == 1


# --- orpo runs / orpo prune -------------------------------------------------------------------


def _two_sft_entries_and_a_dpo(lab) -> tuple[Path, Path, Path]:
    train(**{"sft.lr": 1e-3})
    old = view().resolve()
    train(**{"sft.lr": 2e-3})
    train(DPO, **{"sft.lr": 2e-3})
    return old, view().resolve(), view(DPO).resolve()


def test_runs_lists_every_entry_and_which_are_current(lab, capsys):
    old, new, dpo = _two_sft_entries_and_a_dpo(lab)
    resampled = view(f"{SFT}-resampled")  # an evaluation-only folder: stays a real folder
    resampled.mkdir()
    (resampled / "samples.jsonl").write_text("{}\n")

    assert main(["runs", "micro"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[1]: line.split() for line in out.splitlines()[1:4]}
    assert set(rows) == {old.name, new.name, dpo.name}
    assert rows[old.name][0] == SFT and rows[old.name][2] == "finished"
    assert rows[old.name][-1] == "-" and rows[new.name][-1] == rows[dpo.name][-1] == "yes"
    assert "3 entries" in out and "2 current" in out and "(1 entries)" in out
    assert f"{SFT}-resampled" in out  # named as a real folder, not in the store

    # a partial entry shows as such
    lab.fail_next = True
    with pytest.raises(CellFailed):
        train(**{"sft.lr": 3e-3})
    partial = store.list_entries("micro")
    assert {e.path.name: e.state for e in partial}[view().resolve().name] == "partial"


def test_prune_deletes_only_the_entries_no_view_points_at(lab, capsys):
    old, new, dpo = _two_sft_entries_and_a_dpo(lab)
    size = store.folder_size(old)
    assert size > 0

    assert main(["prune", "micro", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would delete {old}" in out and str(new) not in out and str(dpo) not in out
    assert old.is_dir()  # a dry run deletes nothing

    assert main(["prune", "micro"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {old} (finished, {store.human_size(size)})" in out
    assert "deleted 1 entries" in out
    assert not old.exists() and new.is_dir() and dpo.is_dir()
    assert (view() / "model").is_dir() and (view(DPO) / "model").is_dir()
    assert train(**{"sft.lr": 2e-3})["status"] == "cached"

    assert main(["prune", "micro"]) == 0  # nothing left to prune
    assert "deleted 0 entries" in capsys.readouterr().out


def test_prune_refuses_while_a_run_of_the_experiment_is_alive(lab, capsys):
    old, _, _ = _two_sft_entries_and_a_dpo(lab)
    live_runs.register("micro", "flow-run-1", None)  # this very process: alive
    assert main(["prune", "micro"]) == 1
    assert "live run" in capsys.readouterr().err
    assert old.is_dir()
    assert main(["prune", "micro", "--dry-run"]) == 0  # saying what it would do is fine
    live_runs.unregister("micro", "flow-run-1")
    assert main(["prune", "micro"]) == 0 and not old.exists()


def test_an_unknown_experiment_is_a_clear_error(lab, capsys):
    train()
    for command in (["runs", "nope"], ["prune", "nope", "--dry-run"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "EXPERIMENT 'nope'" in err and "micro" in err  # names the value and the known ones


def test_prune_keeps_the_last_result_of_a_cell_whose_changed_run_never_trained(lab, capsys):
    from orpo.pipeline import finished_result

    train()  # finished under lr 1e-3
    finished = entry_of(job_for(SFT))
    changed = job_for(SFT, **{"sft.lr": 5e-3})
    assert finished_result(changed) is None  # the view now points at the new, empty entry
    assert view().resolve() == entry_of(changed).resolve()

    assert main(["prune", "micro"]) == 0  # the changed run was stopped before it trained
    capsys.readouterr()
    assert (finished / "result.json").is_file()  # the last result survives
    assert train()["status"] == "cached"
