"""HH-RLHF and UltraFeedback adapters on the hand-written fixtures (never the hub)."""

from pathlib import Path

import pytest

from orpo.data.adapters import (
    hh_rlhf_to_example,
    load_preference_dataset,
    ultrafeedback_to_example,
)
from orpo.data.clean import clean_pairs

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HH_FILE = FIXTURES / "hh_rlhf.jsonl"
UF_FILE = FIXTURES / "ultrafeedback.jsonl"


# --- HH-RLHF rows ------------------------------------------------------------------------------


def test_hh_single_turn_row():
    row = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
    }
    example = hh_rlhf_to_example(row, 7)
    assert example.id == "hh-7"
    assert example.prompt == [{"role": "user", "content": "Hi"}]
    assert (example.chosen, example.rejected) == ("Hello!", "Go away.")


def test_hh_prompt_backs_off_to_the_assistant_marker_when_replies_share_words():
    row = {
        "chosen": "\n\nHuman: Capital?\n\nAssistant: The capital is Paris.",
        "rejected": "\n\nHuman: Capital?\n\nAssistant: The capital is Lyon.",
    }
    example = hh_rlhf_to_example(row, 0)
    assert example.prompt == [{"role": "user", "content": "Capital?"}]
    assert example.chosen == "The capital is Paris."
    assert example.rejected == "The capital is Lyon."


def test_hh_without_leading_newlines_is_accepted():
    row = {"chosen": "Human: Hi\n\nAssistant: Hello!", "rejected": "Human: Hi\n\nAssistant: No."}
    assert hh_rlhf_to_example(row, 0).prompt == [{"role": "user", "content": "Hi"}]


def test_hh_consecutive_turns_of_one_speaker_are_merged():
    row = {
        "chosen": "\n\nHuman: Hi\n\nHuman: Are you there?\n\nAssistant: Yes.",
        "rejected": "\n\nHuman: Hi\n\nHuman: Are you there?\n\nAssistant: No.",
    }
    assert hh_rlhf_to_example(row, 0).prompt == [
        {"role": "user", "content": "Hi\n\nAre you there?"}
    ]


@pytest.mark.parametrize(
    "row",
    [
        {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!"},  # no rejected
        {"chosen": "\n\nHuman: Hi\n\nAssistant: a", "rejected": None},
        {"chosen": "Hello there", "rejected": "Goodbye"},  # no turns at all
        {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: x"},
        {"chosen": "preamble\n\nAssistant: x", "rejected": "preamble\n\nAssistant: y"},
        {
            "chosen": "\n\nAssistant: x\n\nAssistant: y",
            "rejected": "\n\nAssistant: x\n\nAssistant: z",
        },
    ],
)
def test_hh_malformed_rows_raise_naming_the_index(row):
    with pytest.raises(ValueError, match="row 41"):
        hh_rlhf_to_example(row, 41)


def test_hh_fixture_multi_turn_unicode_empty_and_identical():
    examples = load_preference_dataset("hh-rlhf", str(HH_FILE))
    assert [e.id for e in examples] == [f"hh-{i}" for i in range(5)]
    multi_turn, accented, empty, identical, _ = examples

    assert multi_turn.prompt == [
        {"role": "user", "content": "What's a good name for a cat?"},
        {"role": "assistant", "content": "How about Whiskers?"},
        {"role": "user", "content": "Something more unusual, please."},
    ]
    assert multi_turn.chosen == "Try Ptolemy, Quince or Marzipan."
    assert multi_turn.rejected == "Cat."

    assert accented.prompt[0]["content"] == "Comment dit-on « merci » en japonais ? 🙏"
    assert accented.chosen == "On dit « arigatō » (ありがとう). 😊"

    assert empty.chosen and empty.rejected == ""  # present before cleaning
    assert identical.chosen == identical.rejected == "Hello!"

    kept, report = clean_pairs(examples)
    assert [e.id for e in kept] == ["hh-0", "hh-1", "hh-4"]
    assert report.dropped["empty_rejected"] == 1
    assert report.dropped["identical"] == 1
    assert report.kept == 3


# --- UltraFeedback rows ------------------------------------------------------------------------


def test_uf_fixture_multi_turn_unicode_empty_and_identical():
    examples = load_preference_dataset("ultrafeedback", str(UF_FILE))
    assert len(examples) == 5
    single, multi_turn, accented, empty, identical = examples

    assert single.prompt == [{"role": "user", "content": "How many legs does a spider have?"}]
    assert single.chosen == "A spider has eight legs."
    assert single.metadata == {
        "source": "ultrafeedback",
        "prompt_id": "a1f3",
        "score_chosen": 9.0,
        "score_rejected": 3.0,
    }

    assert [m["role"] for m in multi_turn.prompt] == ["user", "assistant", "user"]
    assert multi_turn.prompt[1]["content"] == "Guten Morgen."
    assert multi_turn.chosen == "Bonjour."

    assert accented.prompt[0]["content"] == "Écris « bonjour » en grec et en russe. 🌍"
    assert accented.chosen == "Grec : Γειά σου. Russe : Здравствуйте."

    assert empty.rejected == ""
    assert identical.chosen == identical.rejected

    kept, report = clean_pairs(examples)
    assert [e.id for e in kept] == ["uf-0", "uf-1", "uf-2"]
    assert report.dropped == {
        "empty_prompt": 0,
        "empty_chosen": 0,
        "empty_rejected": 1,
        "identical": 1,
    }


def test_uf_without_history_uses_the_prompt_field():
    row = {
        "prompt": "Name a colour.",
        "chosen": [{"role": "assistant", "content": " Red. "}],
        "rejected": [{"role": "assistant", "content": "Seven."}],
    }
    example = ultrafeedback_to_example(row, 3)
    assert example.id == "uf-3"
    assert example.prompt == [{"role": "user", "content": "Name a colour."}]
    assert (example.chosen, example.rejected) == ("Red.", "Seven.")
    assert example.metadata == {"source": "ultrafeedback"}


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "q", "chosen": [{"role": "user", "content": "q"}], "rejected": "x"},
        {"prompt": "q", "chosen": [], "rejected": "x"},
        {"prompt": "q", "chosen": [{"role": "robot", "content": "a"}], "rejected": "x"},
        {"chosen": "a", "rejected": "b"},  # no prompt and no history
        {
            "prompt": "q",
            "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
            "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "b"}],
        },
    ],
)
def test_uf_malformed_rows_raise_naming_the_index(row):
    with pytest.raises(ValueError, match="row 12"):
        ultrafeedback_to_example(row, 12)


# --- loading -----------------------------------------------------------------------------------


def test_parquet_file_loads_like_jsonl(tmp_path):
    pandas = pytest.importorskip("pandas")
    parquet = tmp_path / "uf.parquet"
    pandas.read_json(UF_FILE, lines=True).to_parquet(parquet)
    from_parquet = load_preference_dataset("ultrafeedback", str(parquet))
    from_jsonl = load_preference_dataset("ultrafeedback", str(UF_FILE))
    assert [e.to_dict() for e in from_parquet] == [e.to_dict() for e in from_jsonl]


def test_limit_keeps_the_first_rows():
    examples = load_preference_dataset("hh-rlhf", str(HH_FILE), limit=2)
    assert [e.id for e in examples] == ["hh-0", "hh-1"]


def test_unknown_kind_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown data set kind 'shp'"):
        load_preference_dataset("shp", str(HH_FILE))


def test_unsupported_suffix_is_a_clear_error(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text("chosen,rejected\na,b\n")
    with pytest.raises(ValueError, match=r"unsupported data file .*'\.csv'"):
        load_preference_dataset("hh-rlhf", str(csv))


@pytest.mark.parametrize("source", ["missing/pairs.jsonl", "./nowhere", "/no/such/file.parquet"])
def test_missing_local_path_is_file_not_found(source):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a hub id"):
        load_preference_dataset("hh-rlhf", source)
