"""`orpo bench --against trl` for real: TRL's ORPOTrainer and DPOTrainer train the bench's model
on its rows next to our ZeRO-3 cells, and both sides were fed the same shapes."""

from __future__ import annotations

import json

import pytest

from orpo.bench import run_benchmark
from orpo.bench_trl import trl_version
from tests.requirements import require

pytestmark = pytest.mark.integration


def test_trl_rows_train_on_the_same_shapes_as_ours(tmp_path, capsys):
    require("TRL", None if trl_version() else "TRL is not installed (pip install -e '.[bench]')")
    table = run_benchmark(
        tmp_path, steps=2, models=["opt-tiny"], engines=[("zero3", 1)], against_trl=True
    )
    # the engines of one method ran back to back (the machine's drift hits them alike)
    lines = capsys.readouterr().out.splitlines()
    ran = [tuple(line.split()[5:7]) for line in lines if line.startswith("[bench ")]
    assert ran == [
        ("sft", "zero3"),
        ("dpo", "zero3"),
        ("dpo", "trl"),
        ("orpo", "zero3"),
        ("orpo", "trl"),
    ]
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert not [r for r in rows if "error" in r], rows
    by = {(r["engine"], r["method"]): r for r in rows}
    assert ("trl", "sft") not in by  # TRL's anchor is for the preference trainers
    for method in ("dpo", "orpo"):
        ours, trl = by["zero3", method], by["trl", method]
        assert trl["steps"] == ours["steps"] == 2
        # the same pairs, batch and length limit: each side's own token count agrees closely
        assert trl["tokens_per_step"] == pytest.approx(ours["tokens_per_step"], rel=0.15)
        assert trl["step_peak_rss_mb"] > 0 and trl["seconds_per_step"] > 0
    assert "## Against TRL" in table.read_text()


@pytest.mark.parametrize("method", ["orpo", "dpo"])
def test_trl_is_configured_to_do_a_step_of_our_work(method, tmp_path):
    from types import SimpleNamespace

    from orpo.bench_trl import trl_config
    from orpo.config import OptimConfig, ResourcesConfig

    require("TRL", None if trl_version() else "TRL is not installed (pip install -e '.[bench]')")
    job = SimpleNamespace(
        optim=OptimConfig(lr=3e-4, epochs=1, batch_size=8, grad_accum=2, max_grad_norm=0.5),
        resources=ResourcesConfig(device="cpu"),
        max_length=48,
        cell=SimpleNamespace(seed=3, orpo_lambda=0.25, dpo_beta=0.2),
    )
    args = trl_config(method, job, steps=10, out_dir=str(tmp_path))
    # TRL's configs default to activation recomputation and bf16; ours do neither on CPU
    assert not args.gradient_checkpointing and not args.bf16 and args.use_cpu
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 2)
    assert (args.learning_rate, args.max_grad_norm, args.max_length) == (3e-4, 0.5, 48)
    assert args.beta == {"orpo": 0.25, "dpo": 0.2}[method] and args.seed == 3
