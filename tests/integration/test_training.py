"""Training cells for real: DeepSpeed ZeRO-3 worker processes started through the launcher
(torchrun), on the smallest preset, a tiny synthetic data set and 4 optimizer steps.

Every cell is a real subprocess (~15 s each, mostly start-up), so the module trains each cell
once and the tests share them. Loss curves are pinned: the runs are deterministic (same seed,
same data order), and a change in any loss, batching or schedule code shows up here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orpo import paths, tracking
from orpo.config import ConfigError, expand_cells, parse_experiment
from orpo.data.prepare import prepare_data
from orpo.models import build_model, load_model, load_tokenizer
from orpo.pipeline import make_job, train_cell
from orpo.training import launch
from orpo.training.engine import shm_allreduce_names, warmup_cosine
from orpo.training.job import CellJob
from orpo.training.launch import CellFailed, free_port
from tests.faults import inject

pytestmark = pytest.mark.integration

STEPS = 4
OPTIM = {
    "lr": 1e-3,
    "epochs": 1,
    "batch_size": 4,
    "grad_accum": 2,
    "warmup_ratio": 0.1,
    "eval_every": 2,
    "checkpoint_every": 2,
    "max_steps": STEPS,
}
RAW = {
    "name": "train-test",
    "data": {
        "source": "synthetic",
        "synthetic": {"n_train": 64, "n_eval": 16, "n_test": 8},
        "max_length": 40,
        "max_prompt_length": 20,
        "tokenizer_vocab_size": 320,
    },
    "models": ["opt-tiny"],
    "methods": ["sft", "dpo", "orpo"],
    "orpo_lambdas": [0.5],
    "dpo_betas": [0.1, 0.5],
    "sft": OPTIM,
    "dpo": OPTIM,
    "orpo": OPTIM,
    "rm": OPTIM,
    "eval": {"judge": "reward-model", "rm_model": "opt-tiny"},
    "resources": {"procs_per_cell": 1, "max_parallel_cells": 1},
}
CELLS = {
    "sft": "sft-opt-tiny-s0",
    "dpo": "dpo-opt-tiny-b0.1-s0",
    "dpo-b0.5": "dpo-opt-tiny-b0.5-s0",
    "orpo": "orpo-opt-tiny-l0.5-s0",
    "rm": "rm-opt-tiny-s0",
}

# train/loss per optimizer step, recorded from one run of this file (1 process, batch 4 x
# accumulation 2, 8 pairs per step). DPO starts at ln 2: its policy IS its reference at step 1.
PINNED = {
    "sft": [5.814100742340088, 5.614474177360535, 5.449048280715942, 5.518489122390747],
    "dpo": [0.6931471824645996, 0.6862696409225464, 0.6920643150806427, 0.696580171585083],
    "orpo": [6.158343315124512, 5.967993497848511, 5.783124208450317, 5.878983736038208],
    "rm": [0.7065262496471405, 0.717931866645813, 0.6912975311279297, 0.6908748745918274],
}
TOL = 1e-4

CATALOGUE = [
    "train/loss",
    "train/nll",
    "train/or_loss",
    "train/log_odds_ratio",
    "train/logp_chosen",
    "train/logp_rejected",
    "train/lr",
    "train/grad_norm",
    "train/tokens_per_s",
    "eval/loss",
]
TOTALS = ["cell/forward_passes", "cell/tokens", "cell/wall_seconds", "cell/peak_rss_mb"]


class Lab:
    """The test experiment; trains each named cell once and remembers its result."""

    def __init__(self, home: Path):
        self.home = home
        self.exp = parse_experiment(RAW, "tests/integration/test_training.py")
        prepare_data(self.exp, paths.data_dir(self.exp.name))
        self.cells = {c.id: c for c in expand_cells(self.exp)}
        self.results: dict[str, dict] = {}
        self.run_ids: dict[str, str] = {}
        self.output: dict[str, list[str]] = {}

    def job(
        self,
        name: str,
        variant: str = "",
        optim: dict | None = None,
        resources: dict | None = None,
        **fields,
    ) -> CellJob:
        job = make_job(self.exp, self.cells[CELLS[name]])
        update = dict(fields)
        if variant:
            update["out_dir"] = f"{job.out_dir}-{variant}"
        if optim:
            update["optim"] = job.optim.model_copy(update=optim)
        if resources:
            update["resources"] = job.resources.model_copy(update=resources)
        return job.model_copy(update=update)

    def run(self, key: str, job: CellJob) -> dict:
        lines = self.output.setdefault(key, [])
        return train_cell(job, on_line=lines.append)

    def trained(self, name: str) -> dict:
        """Result of the plain cell `name` (trains it, and its dependencies, on first use)."""
        if name not in self.results:
            if name.startswith("dpo"):
                self.trained("sft")
            fields = {}
            if name == "orpo":  # the MLflow test reads this cell's run
                run_id = self.run_ids[name] = tracking.create_run(self.exp.name, CELLS[name])
                fields = {"mlflow_run_id": run_id, "tracking_uri": tracking.default_tracking_uri()}
            self.results[name] = self.run(name, self.job(name, **fields))
        return self.results[name]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    home = tmp_path_factory.mktemp("orpo-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ORPO_HOME", str(home))
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        yield Lab(home)


def metric_rows(cell_dir: str | Path) -> list[dict]:
    """Per-step rows of metrics.jsonl (the cell totals line at the end left out)."""
    lines = (Path(cell_dir) / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if "train/loss" in row]


def curve(cell_dir: str | Path, key: str = "train/loss") -> list[float]:
    return [row[key] for row in metric_rows(cell_dir)]


def assert_curves_match(actual: list[float], expected: list[float], tol: float = TOL) -> None:
    assert len(actual) == len(expected), (actual, expected)
    assert actual == pytest.approx(expected, abs=tol, rel=tol), f"actual curve: {actual}"


def changed_fraction(state: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> float:
    common = [k for k in state if k in before]
    assert len(common) >= 0.9 * len(before), (sorted(state), sorted(before))
    changed = [k for k in common if not torch.allclose(state[k], before[k], atol=1e-6, rtol=0)]
    return len(changed) / len(common)


# --- each method: pinned curve, parameters change, a reloadable safetensors model -------------


@pytest.mark.parametrize("name", ["sft", "dpo", "orpo", "rm"])
def test_method_trains_with_pinned_curve(lab, name):
    result = lab.trained(name)
    job = lab.job(name)
    assert result["status"] == "completed" and result["steps"] == STEPS
    assert result["world_size"] == 1 and result["zero_stage"] == 3
    rows = metric_rows(job.out_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert_curves_match(curve(job.out_dir), PINNED[name])
    assert all(math.isfinite(r["train/grad_norm"]) and r["train/grad_norm"] > 0 for r in rows)
    # the rate each update used: linear warmup (none at 4 steps x 0.1) then cosine decay
    factor = warmup_cosine(STEPS, OPTIM["warmup_ratio"])
    assert [r["train/lr"] for r in rows] == pytest.approx(
        [OPTIM["lr"] * factor(s) for s in range(STEPS)]
    )
    assert [r["step"] for r in rows if "eval/loss" in r] == [2, 4]
    if name == "dpo":
        assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert rows[0]["train/reward_margin"] == pytest.approx(0.0, abs=1e-4)

    # consolidated: a safetensors Hugging Face folder that from_pretrained loads
    model_dir = Path(result["model_dir"])
    assert (model_dir / "model.safetensors").is_file()
    assert not list(model_dir.glob("*.bin")) and not list(model_dir.glob("*.pt"))
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    kind = "reward" if name == "rm" else "causal-lm"
    model = load_model(model_dir, kind=kind)
    tokenizer = load_tokenizer(str(model_dir))
    assert len(tokenizer) == model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[tokenizer.bos_token_id, 10, 11, 12]])
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert out.shape == ((1, 1) if kind == "reward" else (1, 4, len(tokenizer)))
    assert torch.isfinite(out).all()
    assert not (model_dir.parent / "checkpoints").exists()  # consolidated, then cleaned up

    # parameters moved away from where the cell started
    trained = load_file(model_dir / "model.safetensors")
    if name == "dpo":
        start = load_file(Path(job.init_from) / "model.safetensors")
    else:  # the preset's random init at the cell's seed, exactly as the worker builds it
        data_tokenizer = load_tokenizer(str(Path(job.data_dir) / "tokenizer"))
        start = build_model("opt-tiny", data_tokenizer, kind=kind, seed=job.cell.seed).state_dict()
    assert changed_fraction(trained, start) > 0.9
    assert all(torch.isfinite(t).all() for t in trained.values())


def test_launcher_output_is_readable(lab):
    lab.trained("orpo")
    forwarded = "\n".join(lab.output["orpo"])
    assert "[orpo-opt-tiny-l0.5-s0] step 4/4 loss=" in forwarded
    for noise in ("FutureWarning", "return func(*args", "Gathering sharded weights", "it/s]"):
        assert noise not in forwarded
    # the worker silences torch's deprecation warnings at the source, not just in forwarding
    assert "FutureWarning" not in (Path(lab.job("orpo").out_dir) / "train.log").read_text()


# --- data-parallel and accumulation invariance ---------------------------------------------------


def test_two_process_zero3_matches_one_process(lab, monkeypatch):
    """Global batch 8 either way: 1 process x batch 4 x accumulation 2 (the pinned cell) vs
    2 processes x batch 4 x accumulation 1."""
    one = lab.job("orpo")
    lab.trained("orpo")
    two = lab.job("orpo", "2proc", optim={"grad_accum": 1}, resources={"procs_per_cell": 2})
    ports = []  # the cell's process group's port names its shared-memory buffers

    def recorded_free_port() -> int:
        ports.append(free_port())
        return ports[-1]

    monkeypatch.setattr(launch, "free_port", recorded_free_port)
    result = lab.run("orpo-2proc", two)
    assert result["world_size"] == 2 and result["steps"] == STEPS
    # DeepSpeed's 66 MB shared-memory buffers (RAM) per process do not outlive the cell
    assert len(ports) == 1 and shm_allreduce_names(port=ports[0]) == []
    for key in (
        "train/loss",
        "train/nll",
        "train/or_loss",
        "train/log_odds_ratio",
        "train/grad_norm",
    ):
        assert_curves_match(curve(two.out_dir, key), curve(one.out_dir, key))
    eval_one = [r["eval/loss"] for r in metric_rows(one.out_dir) if "eval/loss" in r]
    eval_two = [r["eval/loss"] for r in metric_rows(two.out_dir) if "eval/loss" in r]
    assert_curves_match(eval_two, eval_one)
    assert result["tokens"] == lab.trained("orpo")["tokens"]  # same examples seen


def test_gradient_accumulation_matches_full_batch(lab):
    """Batch 8 x accumulation 1 vs batch 4 x accumulation 2: token-normalised over the whole
    window, so the loss (not only the update) is the same."""
    accumulated = lab.job("orpo")
    lab.trained("orpo")
    full = lab.job("orpo", "b8", optim={"batch_size": 8, "grad_accum": 1})
    lab.run("orpo-b8", full)
    for key in ("train/loss", "train/nll", "train/grad_norm"):
        assert_curves_match(curve(full.out_dir, key), curve(accumulated.out_dir, key))


# --- kill and resume -----------------------------------------------------------------------------


def test_kill_and_resume_reproduces_the_tail(lab, monkeypatch):
    reference = lab.job("orpo")
    lab.trained("orpo")
    run_id = tracking.create_run(lab.exp.name, "orpo-resume")
    job = lab.job(
        "orpo", "resume", mlflow_run_id=run_id, tracking_uri=tracking.default_tracking_uri()
    )
    assert job.optim.checkpoint_every == 2

    inject(monkeypatch, {job.cell.id: {"kill_after_step": 3}})  # dies right after step 3 is logged
    with pytest.raises(CellFailed, match="exited with code"):
        lab.run("orpo-resume-killed", job)
    ckpt = Path(job.out_dir) / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step2"
    assert [r["step"] for r in metric_rows(job.out_dir)] == [1, 2, 3]
    assert not (Path(job.out_dir) / "result.json").exists()

    monkeypatch.undo()  # no fault any more
    result = lab.run("orpo-resume", job)
    assert result["resumed_from"] == 2 and result["steps"] == STEPS
    assert any("resumed from checkpoint at step 2" in line for line in lab.output["orpo-resume"])
    rows = metric_rows(job.out_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]  # step 3 of the killed run was dropped
    for key in ("train/loss", "train/grad_norm", "train/lr"):
        assert_curves_match(
            curve(job.out_dir, key)[2:], curve(reference.out_dir, key)[2:], tol=1e-5
        )
    assert result["best_eval_loss"] == pytest.approx(
        lab.trained("orpo")["best_eval_loss"], abs=1e-5
    )

    # MLflow got steps 1-2 from before the crash (flushed with the checkpoint) and 3-4 after
    from mlflow.tracking import MlflowClient

    history = MlflowClient().get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == [1, 2, 3, 4]


# --- DPO reference cache -------------------------------------------------------------------------


def test_dpo_reference_cache_hit_on_second_beta(lab):
    first = lab.trained("dpo")
    second = lab.run("dpo-b0.5", lab.job("dpo-b0.5"))
    assert first["used_reference_cache"] is False and second["used_reference_cache"] is True
    # 64 train pairs + 16 eval pairs in reference batches of 16: 4 + 1 forward passes, once
    assert first["reference_forward_passes"] == 5 and second["reference_forward_passes"] == 0
    assert first["forward_passes"] == second["forward_passes"] + 5
    assert second["forward_passes"] == STEPS * OPTIM["grad_accum"]  # one pass per micro-batch
    assert any("cache hit" in line for line in lab.output["dpo-b0.5"])
    # the cached reference is the same as a fresh one: at step 1 the policy is the reference
    rows = metric_rows(lab.job("dpo-b0.5").out_dir)
    assert rows[0]["train/loss"] == pytest.approx(math.log(2), abs=1e-5)
    # a larger beta scales the same implicit rewards up
    assert curve(lab.job("dpo-b0.5").out_dir) != pytest.approx(PINNED["dpo"], abs=1e-6)


# --- MLflow --------------------------------------------------------------------------------------


def test_mlflow_holds_the_catalogue(lab):
    from mlflow.tracking import MlflowClient

    result = lab.trained("orpo")
    client = MlflowClient()  # MLFLOW_TRACKING_URI from the fixture
    run = client.get_run(lab.run_ids["orpo"])
    steps = {}
    for key in CATALOGUE:
        history = client.get_metric_history(run.info.run_id, key)
        assert history, f"{key} missing from MLflow"
        steps[key] = sorted(m.step for m in history)
    # eval at step 0 too: where the method started
    assert steps["train/loss"] == [1, 2, 3, 4] and steps["eval/loss"] == [0, 2, 4]
    losses = sorted(client.get_metric_history(run.info.run_id, "train/loss"), key=lambda m: m.step)
    assert_curves_match([m.value for m in losses], PINNED["orpo"])
    for key in TOTALS:
        assert key in run.data.metrics, key
    assert run.data.metrics["cell/forward_passes"] == result["forward_passes"] == 8
    assert run.data.metrics["cell/tokens"] == result["tokens"] > 0
    assert run.data.metrics["cell/peak_rss_mb"] > 100

    params = run.data.params
    assert params["cell.orpo_lambda"] == "0.5" and params["cell.stage"] == "orpo"
    assert params["optim.lr"] == "0.001" and params["optim.grad_accum"] == "2"
    assert params["nll_scope"] == "response"
    assert not [k for k in params if "alpha" in k]  # one name per hyper-parameter

    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"job.json", "result.json", "ds_config.json"} <= artifacts
    ds_config = json.loads(
        Path(
            client.download_artifacts(run.info.run_id, "ds_config.json", str(lab.home))
        ).read_text()
    )
    assert ds_config["zero_optimization"]["stage"] == 3


# --- failures ------------------------------------------------------------------------------------


def test_nan_loss_fails_the_cell_naming_the_step(lab, monkeypatch):
    job = lab.job("sft", "nan")
    inject(monkeypatch, {job.cell.id: {"nan_at_step": 3}})
    with pytest.raises(CellFailed, match=r"non-finite loss nan at optimizer step 3") as err:
        lab.run("sft-nan", job)
    assert str(err.value).splitlines()[0].startswith(f"cell {job.cell.id} exited with code")
    out = Path(job.out_dir)
    assert not (out / "result.json").exists() and not (out / "model").exists()
    assert [r["step"] for r in metric_rows(out)] == [1, 2]  # nothing logged for step 3


def test_data_that_fits_no_pair_fails_clearly_before_training(lab):
    raw = {
        **RAW,
        "name": "train-test-too-short",
        "methods": ["orpo"],
        "eval": {"judge": "oracle"},
    }
    too_short = {**raw, "data": {**RAW["data"], "max_length": 12, "max_prompt_length": 11}}
    with pytest.raises(ConfigError, match="leaves 1 of data.max_length=12 tokens"):
        parse_experiment(too_short)  # the experiment file is refused first ...
    exp = parse_experiment(raw)
    prepare_data(exp, paths.data_dir(exp.name))
    cell = next(c for c in expand_cells(exp) if c.stage == "orpo")
    # ... and a hand-edited job.json still fails clearly in the worker
    job = make_job(exp, cell).model_copy(update={"max_length": 12, "max_prompt_length": 11})
    with pytest.raises(CellFailed) as err:
        train_cell(job, on_line=lambda line: None)
    first = str(err.value).splitlines()[0]
    assert "no pair fits max_length=12 with max_prompt_length=11" in first
    assert "dropped (no room for a response)" in first and "raise data.max_length" in first
    assert not (job.out / "metrics.jsonl").exists()  # failed before the first step
    assert "ZeRO-3" not in (job.out / "train.log").read_text()  # and before DeepSpeed started
