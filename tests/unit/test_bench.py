"""`orpo bench`: what to measure is checked before anything trains, and the tables compare
engines on what they were given (step time, the training step's memory, tokens against TRL)."""

from __future__ import annotations

import pytest

from orpo.bench import (
    _row,
    check_selection,
    cpu_model,
    parse_engine,
    render_table,
    typical_step_seconds,
)

pytestmark = pytest.mark.unit


def test_engines_parse_and_a_bad_one_is_named():
    assert parse_engine("zero3x2") == ("zero3", 2)
    assert parse_engine("torch") == ("torch", 1) == parse_engine("torchx1")
    with pytest.raises(ValueError, match="engine 'zero2x1': choose from zero3x1, zero3x2"):
        parse_engine("zero2x1")


def test_dpo_needs_the_sft_cell_it_starts_from():
    check_selection(["sft", "dpo"], [("zero3", 1), ("torch", 1)])
    with pytest.raises(ValueError, match="'dpo' needs 'sft' and engine zero3x1"):
        check_selection(["dpo"], [("zero3", 1)])
    with pytest.raises(ValueError, match="'dpo' needs 'sft' and engine zero3x1"):
        check_selection(["sft", "dpo"], [("torch", 1)])
    with pytest.raises(ValueError, match="method 'kto'"):
        check_selection(["kto"], [("torch", 1)])


def test_the_global_batch_must_split_evenly_over_the_processes():
    check_selection(["orpo"], [("zero3", 2), ("torch", 1)], global_batch=64)
    with pytest.raises(ValueError, match="global batch 15: must be a positive multiple of 2"):
        check_selection(["orpo"], [("zero3", 2), ("torch", 1)], global_batch=15)
    with pytest.raises(ValueError, match="global batch 0"):
        check_selection(["orpo"], [("torch", 1)], global_batch=0)


def _result(seconds: float, tokens: int, rss: float, step_rss: float) -> dict:
    return {"steps": 4, "forward_passes": 4, "tokens": tokens, "train_seconds": seconds,
            "parameters": 1_000, "peak_rss_mb": rss, "step_peak_rss_mb": step_rss}  # fmt: skip


def test_a_step_is_the_median_after_the_warm_up_step():
    # 9 s warm-up, one 20 s stall: the mean would say 8.2 s, the typical step is 3 s
    stalled = {"steps": 5, "train_seconds": 41.0, "step_seconds": [9.0, 3.0, 20.0, 3.0, 6.0]}
    assert typical_step_seconds(stalled) == 4.5  # median of 3, 20, 3, 6
    assert typical_step_seconds({**stalled, "step_seconds": [9.0, 3.0, 20.0, 3.0]}) == 3.0
    assert typical_step_seconds({**stalled, "step_seconds": [9.0, 3.0]}) == 6.0  # too few to drop
    assert typical_step_seconds({"steps": 4, "train_seconds": 10.0}) == 2.5  # no per-step times
    row = _row("m", "orpo", "zero3", 1, {**_result(41.0, 4000, 1, 1), **stalled, "tokens": 5000})
    assert row["seconds_per_step"] == 4.5 and row["mean_seconds_per_step"] == 41.0 / 5
    assert row["tokens_per_s"] == pytest.approx(1000 / 4.5)  # tokens per step / typical step


def _report(rows: list[dict]) -> dict:
    return {
        "settings": {"steps": 4, "global_batch": 16, "max_length": 48},
        "machine": {
            "cpus": 2,
            "processor": "x86_64",
            "machine": "x86_64",
            "torch": "2",
            "deepspeed": "0",
            "gpu": None,
        },  # fmt: skip
        "rows": rows,
    }


def test_ratios_against_the_floor_and_against_trl():
    rows = [
        {"model": "m", "method": "orpo", "engine": e, "procs": 1, **_row("m", "orpo", e, 1, r)}
        for e, r in (
            ("torch", _result(2.0, 4000, 500, 400)),
            ("zero3", _result(3.0, 4000, 900, 600)),
            ("trl", _result(4.0, 4400, 700, 500)),
        )
    ]
    table = render_table(_report(rows))
    zero3 = next(line for line in table.splitlines() if "| ZeRO-3 | 1 | 0.750 |" in line)
    assert "| 1.50x | 1.50x |" in zero3  # step time 3/2, step peak RSS 600/400
    trl_part = table.split("## Against TRL")[1]
    # TRL: 4400 tokens in 4 s = 1100/s; ZeRO-3: 4000 in 3 s = 1333/s; the floor 2000/s
    assert "| m | orpo | 1.000 | 1,100 | 1,100 | ZeRO-3 | 1 | 1,333 | 1,000 | 1.21x |" in trl_part
    assert "| plain torch | 1 | 2,000 | 1,000 | 1.82x |" in trl_part


def test_no_trl_table_without_trl_rows_and_failed_rows_span_the_table():
    failed = {"model": "m", "method": "orpo", "engine": "zero3", "procs": 2, "error": "boom"}
    table = render_table(_report([failed]))
    assert "Against TRL" not in table
    header, row = table.splitlines()[4], table.splitlines()[6]
    assert header.count("|") == row.count("|")  # a failed row has every column


def test_the_table_names_the_cpu_by_family_and_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    core = (
        "processor\t: {n}\ncpu family\t: 23\nmodel\t\t: 1\n"
        "model name\t: AMD EPYC\nflags\t\t: fpu {f}\n"
    )
    cpuinfo.write_text(core.format(n=0, f="avx2") + "\n" + core.format(n=1, f="avx2"))
    assert cpu_model(cpuinfo) == "AMD EPYC, family 23 model 1, AVX-512 no"
    cpuinfo.write_text(core.format(n=0, f="avx2 avx512f"))
    assert cpu_model(cpuinfo).endswith("AVX-512 yes")
    assert cpu_model(tmp_path / "missing") is None
    report = _report([])
    report["machine"]["cpu_model"] = "AMD EPYC, family 23 model 1, AVX-512 no"
    assert "2 CPUs (AMD EPYC, family 23 model 1, AVX-512 no)" in render_table(report)


def test_rounds_must_be_at_least_one():
    check_selection(["orpo"], [("torch", 1)], rounds=3)
    with pytest.raises(ValueError, match="rounds 0: must be at least 1"):
        check_selection(["orpo"], [("torch", 1)], rounds=0)


def test_each_round_compares_with_the_floor_measured_beside_it():
    # round 1 ran on a slow minute, round 2 on a fast one: pairing by round gives 1.50x and
    # 1.20x; pairing round 2's ZeRO-3 with round 1's floor would read 0.60x
    timings = {
        1: {"torch": 4.0, "zero3": 6.0, "trl": 8.0},
        2: {"torch": 1.0, "zero3": 1.2, "trl": 1.5},
    }
    rows = [
        {**_row("m", "orpo", e, 1, _result(t, 4000, 500, {"zero3": 600}.get(e, 400))), "round": n}
        for n, by_engine in timings.items()
        for e, t in by_engine.items()
    ]
    report = _report(rows)
    report["settings"]["rounds"] = 2
    table = render_table(report)
    assert "2 rounds: the engines of each (model, method) ran in turn" in table
    main = table.split("## Across rounds")[0]
    assert "| 1.50x | 1.50x |" in next(line for line in main.splitlines() if "| 1.500 |" in line)
    assert "| 1.20x | 1.50x |" in next(line for line in main.splitlines() if "| 0.300 |" in line)
    across = table.split("## Across rounds")[1].split("## Against TRL")[0]
    zero3 = next(line for line in across.splitlines() if "| ZeRO-3 |" in line)
    # s/step per round, time ratios and median, RSS ratios and median, tokens/s vs TRL
    assert "| 1.500, 0.300 | 1.50x, 1.20x | 1.35x | 1.50x, 1.50x | 1.50x |" in zero3
    assert "| 1.33x, 1.25x | 1.29x |" in zero3  # TRL 8 s and 1.5 s against our 6 s and 1.2 s
    trl = table.split("## Against TRL")[1]
    assert "| m | orpo (round 2) | 0.375 |" in trl


def test_one_round_adds_no_round_column_or_table():
    rows = [
        {**_row("m", "orpo", e, 1, _result(2.0, 4000, 500, 400)), "round": 1}
        for e in ("torch", "zero3")
    ]
    table = render_table(_report(rows))
    assert "Across rounds" not in table and "round" not in table.splitlines()[4]


def test_paired_takes_one_process_engines_only_and_refuses_before_writing(tmp_path):
    from orpo.bench import run_benchmark

    with pytest.raises(ValueError, match="engine zero3x2: --paired takes turns between"):
        run_benchmark(tmp_path / "out", engines=[("zero3", 2), ("torch", 1)], paired=True)
    assert not (tmp_path / "out").exists()
    check_selection(["sft"], [("zero3", 1), ("torch", 1)], paired=True)
