"""LoRA fine-tuning for real: a policy cell of a `finetuning: lora` model trains only its
adapters under ZeRO-3 and exports a plain checkpoint with them merged in."""

import pytest
import torch
from safetensors.torch import load_file

from orpo import paths
from orpo.config import expand_cells, parse_experiment
from orpo.data.prepare import prepare_data
from orpo.models import build_model, load_tokenizer
from orpo.pipeline import make_job, train_cell
from tests.micro import MICRO

pytestmark = pytest.mark.integration


def test_a_lora_cell_trains_only_its_adapters_and_exports_them_merged(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    raw = {
        **MICRO,
        "name": "lora-test",
        "models": ["opt-tiny", {"path": "opt-tiny", "finetuning": "lora"}],
        "methods": ["sft"],
        "eval": {**MICRO["eval"], "judge": "oracle"},
        "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    }
    exp = parse_experiment(raw)
    prepare_data(exp, paths.data_dir(exp.name))
    cell = next(c for c in expand_cells(exp) if c.id == "sft-opt-tiny-lora-s0")
    job = make_job(exp, cell)
    assert job.lora is not None and job.lora.r == 4
    lines = []
    result = train_cell(job, on_line=lines.append)
    assert result["status"] == "completed"
    assert any("LoRA r=4" in line and "parameters train" in line for line in lines)

    exported = load_file(str(job.out / "model" / "model.safetensors"))
    assert not [k for k in exported if "lora" in k or k.startswith("base_model.")]  # merged
    tokenizer = load_tokenizer(str(paths.data_dir(exp.name) / "tokenizer"))
    start = build_model("opt-tiny", tokenizer, seed=cell.seed).state_dict()
    changed = {k for k, v in exported.items() if k in start and not torch.equal(v, start[k])}
    assert changed, "the adapters' update is merged into the exported weights"
    assert all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), sorted(changed)
