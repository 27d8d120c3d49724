"""Evaluation without models: the oracle judge, agreement arithmetic, prompt batching, and the
results folder built from hand-made cell folders with constructed rewards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from orpo import paths
from orpo.config import parse_experiment
from orpo.data.schema import PreferenceExample, write_jsonl, write_rows
from orpo.data.synthetic import generate_suite
from orpo.evaluation.cell import judge_name, judge_quality_path, rewards_path
from orpo.evaluation.collect import cell_metrics, collect_results, rerender_report
from orpo.evaluation.generate import _decode_rows, left_pad, prompt_ids
from orpo.evaluation.judges import (
    OracleJudge,
    agreement,
    judge_slug,
    load_judge,
    oracle_agreement,
    ordering_agreement,
    preference_accuracy,
)
from orpo.models import train_tokenizer
from orpo.report.tables import GREEDY_SAMPLE_INDEX, POOLED_SEED, TABLE_COLUMNS, load_results

pytestmark = pytest.mark.unit


def example(family: str, prompt: str, answer: str, **inputs) -> PreferenceExample:
    metadata = {"family": family, "answer": answer, **inputs}
    return PreferenceExample(
        id=f"{family}-1",
        prompt=[{"role": "user", "content": prompt}],
        chosen=answer,
        rejected="x",
        metadata=metadata,
    )


SORT = example("sort", "sort 5 2 9", "2 5 9", items=[5, 2, 9])
ADD = example("add", "add 2 7 and 5 8", "8 5", operands=[27, 58])
MAX = example("max", "max of 4 9 2", "9", items=[4, 9, 2])
REVERSE = example("reverse", "reverse red fox sky", "sky fox red", items=["red", "fox", "sky"])


class ScriptedJudge:
    """Rewards looked up from a dict keyed by response text (unknown texts score 0)."""

    name = "scripted"

    def __init__(self, table: dict[str, float]):
        self.table = table

    def score(self, examples, responses):
        return np.array([self.table.get(r, 0.0) for r in responses])


# --- the oracle judge ---------------------------------------------------------------------------


def test_oracle_scores_right_answers_one_and_wrong_answers_lower():
    judge = OracleJudge()
    examples = [SORT, ADD, MAX, REVERSE]
    right = judge.score(examples, ["2 5 9", "85", "9", "Sky fox red."])  # "85" = "8 5" digits
    wrong = judge.score(examples, ["5 2 9", "7 5", "4", "red fox sky"])
    assert right.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert (wrong < 1.0).all() and (wrong >= 0.0).all()
    # Near misses earn partial credit, nonsense none: "2 9" keeps 2 of 3 sorted items.
    assert judge.score([SORT], ["2 9"])[0] == pytest.approx(0.9 * 2 / 3)
    assert judge.score([SORT, SORT], ["", "banana"]).tolist() == [0.0, 0.0]


def test_oracle_agrees_with_every_synthetic_pair():
    pairs = generate_suite(n_train=0, n_eval=0, n_test=40, seed=3)["test"]
    assert agreement(OracleJudge(), pairs) == 1.0


def test_load_judge_specs():
    assert isinstance(load_judge("oracle"), OracleJudge)
    with pytest.raises(ValueError, match="rm_model_dir"):
        load_judge("reward-model", None)
    with pytest.raises(FileNotFoundError, match="train the rm cell"):
        load_judge("reward-model", "/nonexistent/cells/rm-x/model")


# --- agreement arithmetic -----------------------------------------------------------------------


def test_agreement_counts_wins_ties_and_losses():
    # 5 pairs: chosen above (x3), tie (x1), below (x1) -> (3 + 0.5 + 0) / 5 = 0.7.
    pairs = [
        PreferenceExample(f"p{i}", [{"role": "user", "content": "q"}], f"c{i}", f"r{i}")
        for i in range(5)
    ]
    judge = ScriptedJudge({"c0": 1, "c1": 2, "c2": 3, "c3": 1, "r3": 1, "c4": 0, "r4": 5})
    assert agreement(judge, pairs) == pytest.approx(0.7)
    assert preference_accuracy(np.array([1.0, np.nan]), np.array([0.0, 0.0])) == 1.0


def test_ordering_agreement_on_hand_made_groups():
    oracle = [np.array([1.0, 0.5, 0.0])]  # 3 strict pairs
    assert ordering_agreement([np.array([3.0, 2.0, 1.0])], oracle) == (1.0, 3)
    assert ordering_agreement([np.array([1.0, 2.0, 3.0])], oracle) == (0.0, 3)
    assert ordering_agreement([np.array([7.0, 7.0, 7.0])], oracle) == (0.5, 3)
    # Oracle ties are not counted: only (0, 1) and (0, 2) are strict here; the judge gets
    # (0, 1) right and (0, 2) wrong -> 1/2.
    value, n = ordering_agreement([np.array([2.0, 1.0, 3.0])], [np.array([1.0, 0.0, 0.0])])
    assert (value, n) == (0.5, 2)


def test_oracle_agreement_of_a_length_judge():
    # Oracle: "2 5 9" 1.0 > "2 9" 0.9 * 2/3 = 0.6 > "2 5 9 9 9" 0.9 * 3/5 = 0.54.
    # A judge preferring longer answers orders (0, 1) like the oracle, (0, 2) and (1, 2) not.
    responses = ["2 5 9", "2 9", "2 5 9 9 9"]
    judge = ScriptedJudge({r: len(r) for r in responses})
    assert oracle_agreement(judge, [SORT], [responses]) == pytest.approx(1 / 3)


def test_judge_slug_makes_file_names():
    assert judge_slug("reward-model:rm-opt-small-s0") == "reward-model_rm-opt-small-s0"
    assert judge_slug("reward-model:org/model name") == "reward-model_org_model_name"


# --- prompt batching for generation -------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    suite = generate_suite(n_train=64, n_eval=0, n_test=0, seed=0)["train"]
    texts = [m["content"] for ex in suite for m in ex.prompt] + [ex.chosen for ex in suite]
    return train_tokenizer(texts * 3, vocab_size=300)


def test_left_padding_puts_every_prompt_at_the_end(tokenizer):
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_prompt_ids_match_training_and_keep_bos_when_cut(tokenizer):
    full = prompt_ids(tokenizer, SORT, None)
    assert full[0] == tokenizer.bos_token_id
    cut = prompt_ids(tokenizer, SORT, 4)
    assert cut == [tokenizer.bos_token_id, *full[-3:]]


def test_decoded_rows_stop_at_eos(tokenizer):
    word = tokenizer.encode("sort", add_special_tokens=False)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    padding = [pad] * (2 * len(word) - 1)
    rows = _decode_rows(tokenizer, torch.tensor([[*word, eos, *padding], [*word, *word, *word]]))
    assert rows[0] == ("sort", len(word), True)
    assert rows[1] == ("sortsortsort", 3 * len(word), False)


# --- the results folder from hand-made cell folders --------------------------------------------

K = 2
RAW = {
    "name": "evaltest",
    "data": {"source": "synthetic", "synthetic": {"n_train": 8, "n_eval": 4, "n_test": 4}},
    "models": ["opt-tiny"],
    "methods": ["sft", "dpo", "orpo"],
    "orpo_lambdas": [0.1, 0.5],
    "dpo_betas": [0.1],
    "seeds": [0, 1],
    "eval": {
        "samples_per_prompt": K,
        "judge": "reward-model",
        "rm_model": "opt-tiny",
        "n_bootstrap": 200,
        "embedder": "hashing",
    },
}
# Per (cell, prompt index 0..3): the judge's reward for both rounds; greedy answers get 100 so
# that counting the greedy answer as a round would change every result.
REWARDS = {
    "sft-opt-tiny-s0": [0, 0, 0, 0],
    "sft-opt-tiny-s1": [0, 0, 0, 0],
    "dpo-opt-tiny-b0.1-s0": [0.5, 0.5, 0.5, 0.5],
    "orpo-opt-tiny-l0.1-s0": [1, 1, 1, 1],  # beats SFT everywhere: 1.0
    "orpo-opt-tiny-l0.1-s1": [1, 0, -1, 1],  # vs SFT: win, tie, loss, win -> 0.625
    "orpo-opt-tiny-l0.5-s0": [0, 0, 0, 0],  # ties SFT: 0.5; loses to DPO: 0.0
}
FAILED = "orpo-opt-tiny-l0.5-s1"  # failure.json
MISSING = "dpo-opt-tiny-b0.1-s1"  # nothing at all
RM = "rm-opt-tiny-s0"


def _write_cell(exp, cell_id: str, test, rewards: list[float] | None) -> None:
    folder = paths.cell_dir(exp.name, cell_id)
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "cell_id": cell_id, "status": "completed", "steps": 3, "best_eval_loss": 1.5,
        "forward_passes": 3, "tokens": 300, "wall_seconds": 2.0, "peak_rss_mb": 500.0,
        "startup_seconds": 3.0, "train_seconds": 1.5, "reference_seconds": None,
    }))  # fmt: skip
    write_rows([{"step": s, "train/loss": 2.0 - s / 10, "train/logp_chosen": -2 + s / 10,
                 "train/logp_rejected": -2 - s / 10} for s in (1, 2, 3)],
               folder / "metrics.jsonl")  # fmt: skip
    if rewards is None:
        return
    orpo = cell_id.startswith("orpo")
    samples, scored = [], []
    for ex, reward in zip(test, rewards, strict=True):
        text = ex.chosen if orpo else "wrong"  # the oracle: ORPO right, the others wrong
        for index in [*range(K), GREEDY_SAMPLE_INDEX]:
            samples.append(
                {
                    "prompt_id": ex.id,
                    "sample_index": index,
                    "text": text,
                    "n_tokens": 1,
                    "finished": True,
                }
            )
            scored.append(
                {
                    "prompt_id": ex.id,
                    "sample_index": index,
                    "reward": 100.0 if index == GREEDY_SAMPLE_INDEX else float(reward),
                }
            )
    write_rows(samples, folder / "samples.jsonl")
    name = judge_name(exp)
    write_rows(scored, rewards_path(exp, cell_id, name))
    rewards_path(exp, cell_id, name).with_suffix(".json").write_text(
        json.dumps({"judge": name, "key": "k", "seconds": 0.25})
    )
    write_rows([{"pair_id": ex.id, "logp_chosen": -1.0, "logp_rejected": -2.0,
                 "log_prob_ratio": 1.0, "log_odds_ratio": 1.5} for ex in test],
               folder / "logratios.jsonl")  # fmt: skip


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    exp = parse_experiment(RAW)
    test = generate_suite(8, 4, 4, seed=0)["test"]
    write_jsonl(test, paths.data_dir(exp.name) / "test.jsonl")
    for cell_id, rewards in REWARDS.items():
        _write_cell(exp, cell_id, test, rewards)
    _write_cell(exp, RM, test, None)
    failed = paths.cell_dir(exp.name, FAILED)
    failed.mkdir(parents=True)
    (failed / "failure.json").write_text(json.dumps({"cell_id": FAILED, "error": "NaN loss"}))
    quality = judge_quality_path(exp, judge_name(exp))
    quality.parent.mkdir(parents=True)
    quality.write_text(
        json.dumps(
            {
                "judge": judge_name(exp),
                "agreement_heldout": 0.75,
                "agreement_oracle": None,
                "n_pairs": 4,
            }
        )
    )
    out = collect_results(exp, {"cell_run_urls": {RM: "http://mlflow/run/rm"}, "notes": ["hi"]})
    return exp, out, load_results(out)


def _row(frame, **where):
    for column, value in where.items():
        frame = frame[frame[column].isna()] if value is None else frame[frame[column] == value]
    assert len(frame) == 1, f"{len(frame)} rows match {where}"
    return frame.iloc[0]


def test_collect_writes_every_contract_table(results):
    exp, out, loaded = results
    assert out == paths.results_dir(exp.name)
    assert loaded.missing == {}
    for name, columns in TABLE_COLUMNS.items():
        assert set(columns) <= set(loaded.table(name).columns), name
    assert loaded.meta.judge == "reward-model:rm-opt-tiny-s0"
    assert loaded.meta.models == ["opt-tiny"] and loaded.meta.seeds == [0, 1]
    assert "hi" in loaded.meta.notes


def test_timings_come_from_each_cells_records(results):
    _, _, loaded = results
    timings = loaded.timings
    orpo = timings[timings["cell_id"] == "orpo-opt-tiny-l0.1-s0"].set_index("phase")["seconds"]
    # recorded phases only: no reference pass (None), no evaluation.json here
    assert orpo.to_dict() == {"startup_seconds": 3.0, "train_seconds": 1.5, "judge_seconds": 0.25}
    assert set(timings[timings["cell_id"] == RM]["phase"]) == {"startup_seconds", "train_seconds"}
    assert FAILED not in set(timings["cell_id"])  # a failed cell has no finished phases


def test_failed_and_missing_cells_are_listed(results):
    _, _, loaded = results
    cells = loaded.cells
    assert len(cells) == 1 + 2 * 4  # rm + per seed: sft, dpo, orpo x 2 lambdas
    failed = _row(cells, cell_id=FAILED)
    assert failed["status"] == "failed" and failed["error"] == "NaN loss"
    missing = _row(cells, cell_id=MISSING)
    assert missing["status"] == "failed" and "no result.json" in missing["error"]
    assert set(cells[cells["status"] == "completed"]["cell_id"]) == {*REWARDS, RM}
    assert _row(cells, cell_id=RM)["mlflow_run_url"] == "http://mlflow/run/rm"
    assert any(FAILED in note for note in loaded.meta.notes)


def test_win_rates_on_constructed_rewards(results):
    _, _, loaded = results
    judged = loaded.win_rates[loaded.win_rates["judge"] == "reward-model:rm-opt-tiny-s0"]

    def rate(a, lam, b, seed):
        return _row(judged, method_a=a, orpo_lambda_a=lam, method_b=b, seed=seed)

    assert rate("orpo", 0.1, "sft", 0)["win_rate"] == 1.0
    assert rate("orpo", 0.1, "sft", 1)["win_rate"] == 0.625
    assert rate("orpo", 0.5, "sft", 0)["win_rate"] == 0.5
    assert rate("orpo", 0.1, "dpo", 0)["win_rate"] == 1.0
    assert rate("orpo", 0.5, "dpo", 0)["win_rate"] == 0.0
    assert rate("dpo", None, "sft", 0)["win_rate"] == 1.0
    pooled = rate("orpo", 0.1, "sft", POOLED_SEED)
    assert pooled["win_rate"] == pytest.approx((4 * K * 1.0 + 4 * K * 0.625) / (8 * K))
    assert (pooled["n_prompts"], pooled["n_rounds"], pooled["n_seeds"]) == (8, K, 2)
    first = rate("orpo", 0.1, "sft", 0)
    assert (first["ci_low"], first["ci_high"], first["n_prompts"]) == (1.0, 1.0, 4)
    # Comparisons that need the failed or missing cell are skipped, not crashed on.
    assert judged[(judged["orpo_lambda_a"] == 0.5) & (judged["seed"] != 0)].empty
    assert judged[(judged["method_b"] == "dpo") & (judged["seed"] != 0)].empty
    # On synthetic data the oracle judges too: ORPO's texts are right, SFT's wrong.
    oracle = loaded.win_rates[loaded.win_rates["judge"] == "oracle"]
    assert _row(oracle, method_a="orpo", orpo_lambda_a=0.1, method_b="sft", seed=0)[
        "win_rate"] == 1.0  # fmt: skip


def test_other_tables(results):
    _, _, loaded = results
    diversity = loaded.diversity
    assert set(diversity["cell_id"]) == set(REWARDS)
    assert np.allclose(diversity["pid"], 1.0)  # every prompt's K samples are identical texts
    judges = loaded.judges.set_index("judge")
    assert judges.loc["reward-model:rm-opt-tiny-s0", "agreement_heldout"] == 0.75
    assert 0.0 <= judges.loc["reward-model:rm-opt-tiny-s0", "agreement_oracle"] <= 1.0
    assert judges.loc["oracle", "agreement_heldout"] == 1.0
    samples = loaded.samples
    assert len(samples) == len(REWARDS) * 4 * (K + 1)
    greedy = samples[samples["sample_index"] == GREEDY_SAMPLE_INDEX]
    assert (greedy["reward"] == 100.0).all() and (greedy["prompt"] != "").all()
    assert set(loaded.curves["metric"]) == {
        "train/loss",
        "train/logp_chosen",
        "train/logp_rejected",
    }
    assert len(loaded.logratios) == len(REWARDS) * 4


def test_cell_metrics_for_mlflow(results):
    _, out, _ = results
    metrics = cell_metrics(out)
    orpo = metrics["orpo-opt-tiny-l0.1-s0"]
    assert orpo["eval/win_rate_vs_sft"] == 1.0 and orpo["eval/win_rate_vs_dpo"] == 1.0
    assert orpo["eval/win_rate_ci_low"] == 1.0 and orpo["eval/win_rate_ci_high"] == 1.0
    assert orpo["oracle/win_rate_vs_sft"] == 1.0
    assert {
        "diversity/pid",
        "diversity/aid",
        "diversity/distinct_1",
        "diversity/distinct_2",
    } <= set(orpo)
    assert metrics[RM]["judge/agreement"] == 0.75
    assert all(math.isfinite(v) for values in metrics.values() for v in values.values())


def test_rerender_report_by_name_and_by_yaml(results, tmp_path):
    exp, _, _ = results
    html = rerender_report(exp.name)
    assert html == paths.report_path(exp.name) and "<h1>" in html.read_text()
    yaml_path = tmp_path / "evaltest.yaml"
    yaml_path.write_text(yaml.safe_dump(RAW))
    assert rerender_report(str(yaml_path)) == html
    with pytest.raises(FileNotFoundError, match="no results"):
        rerender_report("never-run")


def test_collect_with_no_cells_at_all(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    exp = parse_experiment(RAW)
    loaded = load_results(collect_results(exp))
    assert (loaded.cells["status"] == "failed").all()
    assert "win_rates" in loaded.missing and "samples" in loaded.missing
    assert Path(loaded.results_dir).is_dir()


def test_results_swap_into_place_leaving_no_folder_aside(tmp_path, monkeypatch):
    from orpo.evaluation import collect

    out = tmp_path / "results"
    first = tmp_path / "new-1"
    first.mkdir()
    (first / "meta.json").write_text("1")
    collect._swap_into_place(first, out, "a")  # no results yet
    assert (out / "meta.json").read_text() == "1"
    second = tmp_path / "new-2"
    second.mkdir()
    (second / "meta.json").write_text("2")
    # another run's results land between this writer's two renames: they step aside as well
    rename = type(out).rename
    landed = []

    def racing_rename(self, target):
        if self == second and not landed:
            other = tmp_path / "other"
            other.mkdir()
            (other / "meta.json").write_text("other")
            rename(other, out)
            landed.append(other)
        return rename(self, target)

    monkeypatch.setattr(type(out), "rename", racing_rename)
    collect._swap_into_place(second, out, "b")
    assert landed and (out / "meta.json").read_text() == "2"  # the last writer wins
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]  # nothing left aside
