"""prepare_data on small local HH-RLHF files: seeded samples (never the head of a sorted dump),
rows with a turn inside the reply dropped and counted, and what the manifest records."""

import json
from pathlib import Path

import pytest

from orpo.config import Experiment
from orpo.data.adapters import SAMPLE_SEED
from orpo.data.prepare import MANIFEST_VERSION, SPLITS, prepare_data, read_split

pytestmark = pytest.mark.unit

SUBSETS = ("helpful-base", "harmless-base")


def hh_row(question: str, good: str = "Sure.", bad: str = "No.") -> dict:
    return {
        "chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
        "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}",
    }


# chosen and rejected differ in an earlier reply: the text after the last shared
# "\n\nAssistant:" still holds the later "\n\nHuman:" turn.
DIVERGE_EARLY = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Joke?\n\nAssistant: No.",
}


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def sorted_dump(path: Path, per_subset: int) -> str:
    """Rows grouped by subset, one subset after the other, as HH-RLHF's files are."""
    rows = [hh_row(f"{subset} question {i}?") for subset in SUBSETS for i in range(per_subset)]
    return write_rows(path, rows)


def experiment(**data) -> Experiment:
    # Hub models only (no preset), so no tokenizer is trained and nothing is downloaded.
    return Experiment.model_validate(
        {
            "name": "prepare-test",
            "models": ["opt-125m"],
            "eval": {"rm_model": "opt-125m"},
            "data": {"source": "hh-rlhf", **data},
        }
    )


def subsets_of(examples) -> set[str]:
    return {example.prompt[0]["content"].split()[0] for example in examples}


def test_limit_and_test_rows_are_seeded_samples_of_a_sorted_dump(tmp_path):
    exp = experiment(
        path=sorted_dump(tmp_path / "train.jsonl", 50),
        test_path=sorted_dump(tmp_path / "test.jsonl", 20),
        limit=30,
        eval_size=6,
        test_size=10,
    )
    out = prepare_data(exp, tmp_path / "data")
    splits = {split: read_split(out, split) for split in SPLITS}
    assert {split: len(rows) for split, rows in splits.items()} == {
        "train": 24,
        "eval": 6,
        "test": 10,
    }
    # the head of either file is helpful-base only; a sample holds both subsets
    assert subsets_of(splits["test"]) == set(SUBSETS)
    assert subsets_of(splits["train"] + splits["eval"]) == set(SUBSETS)
    # eval pairs are still carved from the sampled training pairs
    train_ids, eval_ids = ({e.id for e in splits[s]} for s in ("train", "eval"))
    assert not train_ids & eval_ids

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == MANIFEST_VERSION
    assert manifest["sampling"] == {
        "seed": SAMPLE_SEED,
        "ids": {split: [e.id for e in rows] for split, rows in splits.items()},
    }

    # same config, same rows: a fresh folder gets byte-identical files
    again = prepare_data(exp, tmp_path / "again")
    for name in ("train.jsonl", "eval.jsonl", "test.jsonl", "manifest.json"):
        assert (again / name).read_text() == (out / name).read_text()


def test_rows_with_a_turn_in_the_reply_are_dropped_and_counted_in_the_manifest(tmp_path):
    train_rows = [hh_row(f"train {i}?") for i in range(6)]
    train_rows[1:1] = [DIVERGE_EARLY, DIVERGE_EARLY]
    test_rows = [hh_row("test 0?"), DIVERGE_EARLY, hh_row("test 1?")]
    exp = experiment(
        path=write_rows(tmp_path / "train.jsonl", train_rows),
        test_path=write_rows(tmp_path / "test.jsonl", test_rows),
        eval_size=2,
        test_size=10,
    )
    out = prepare_data(exp, tmp_path / "data")
    cleaning = json.loads((out / "manifest.json").read_text())["cleaning"]
    assert cleaning["train"]["dropped"]["turn_in_response"] == 2
    assert cleaning["train"]["kept"] == 6
    assert cleaning["test"]["dropped"]["turn_in_response"] == 1
    assert cleaning["test"]["kept"] == 2
    for split in SPLITS:
        for example in read_split(out, split):
            for reply in (example.chosen, example.rejected):
                assert "Human:" not in reply and "Assistant:" not in reply


def test_a_folder_from_an_older_manifest_version_is_rebuilt(tmp_path):
    exp = experiment(
        path=sorted_dump(tmp_path / "train.jsonl", 5),
        test_path=sorted_dump(tmp_path / "test.jsonl", 2),
        eval_size=2,
        test_size=3,
    )
    out = tmp_path / "data"
    out.mkdir()
    # what the previous version wrote: the same data config, no version, head-of-file rows
    stale = {"data": exp.data.model_dump(mode="json"), "tokenizer": False}
    (out / "manifest.json").write_text(json.dumps(stale))
    prepare_data(exp, out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == MANIFEST_VERSION
    assert manifest["counts"] == {"train": 8, "eval": 2, "test": 3}
