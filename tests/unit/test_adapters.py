"""HH-RLHF and UltraFeedback adapters on the hand-written fixtures (never the hub)."""

import json
from pathlib import Path

import pytest

from orpo.data.adapters import (
    SAMPLE_SEED,
    UnusableRow,
    hh_rlhf_to_example,
    load_preference_dataset,
    sample_indices,
    ultrafeedback_to_example,
)
from orpo.data.clean import PAIR_DROP_REASONS, ROW_DROP_REASONS, CleaningReport, clean_pairs

pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HH_FILE = FIXTURES / "hh_rlhf.jsonl"
UF_FILE = FIXTURES / "ultrafeedback.jsonl"


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def hh_row(question: str, good: str = "Sure.", bad: str = "No.") -> dict:
    return {
        "chosen": f"\n\nHuman: {question}\n\nAssistant: {good}",
        "rejected": f"\n\nHuman: {question}\n\nAssistant: {bad}",
    }


def msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


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


# Transcripts that diverge before the last turn: the text after the last shared
# "\n\nAssistant:" marker still holds later turns.
DIVERGE_EARLY = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Joke?\n\nAssistant: No.",
}
DIVERGE_IN_LAST_HUMAN_TURN = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Joke?\n\nAssistant: Knock knock.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Poem?\n\nAssistant: Roses.",
}
EXTRA_TURN_AFTER_REPLY = {
    "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Thanks.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
}
EMPTY_REPLY_THEN_TURN = {
    "chosen": "\n\nHuman: Hi\n\nAssistant:\n\nHuman: Hello?\n\nAssistant: Yes.",
    "rejected": "\n\nHuman: Hi\n\nAssistant: Go away.",
}


@pytest.mark.parametrize(
    "row",
    [DIVERGE_EARLY, DIVERGE_IN_LAST_HUMAN_TURN, EXTRA_TURN_AFTER_REPLY, EMPTY_REPLY_THEN_TURN],
)
def test_hh_reply_holding_a_later_turn_is_unusable(row):
    with pytest.raises(UnusableRow, match="row 9: the (chosen|rejected) reply holds a later") as e:
        hh_rlhf_to_example(row, 9)
    assert e.value.reason == "turn_in_response"


def test_hh_rows_with_a_turn_in_the_reply_are_dropped_and_counted(tmp_path):
    rows = [hh_row("Q0?"), DIVERGE_EARLY, hh_row("Q2?"), EXTRA_TURN_AFTER_REPLY]
    report = CleaningReport()
    examples = load_preference_dataset(
        "hh-rlhf", write_rows(tmp_path / "hh.jsonl", rows), report=report
    )
    assert [e.id for e in examples] == ["hh-0", "hh-2"]
    assert all("Human:" not in e.chosen + e.rejected for e in examples)
    kept, report = clean_pairs(examples, report=report)
    assert report.dropped["turn_in_response"] == 2
    assert (report.kept, report.total) == (2, len(rows))


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
    with pytest.raises(ValueError, match="row 41") as e:
        hh_rlhf_to_example(row, 41)
    assert not isinstance(e.value, UnusableRow)  # a broken file fails loudly, not dropped


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
        **dict.fromkeys(ROW_DROP_REASONS, 0),
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


def test_uf_multi_turn_prompt_is_every_message_before_the_final_reply():
    history = [
        msg("system", "Be brief."),
        msg("user", "A?"),
        msg("assistant", "a"),
        msg("user", "B?"),
    ]
    row = {
        "prompt": "B?",
        "chosen": [*history, msg("assistant", "b")],
        "rejected": [*history, msg("assistant", "c")],
    }
    example = ultrafeedback_to_example(row, 0)
    assert example.prompt == history
    assert (example.chosen, example.rejected) == ("b", "c")


def test_uf_string_reply_takes_the_other_sides_conversation():
    row = {"prompt": "B?", "chosen": [msg("user", "B?"), msg("assistant", "b")], "rejected": "c"}
    assert ultrafeedback_to_example(row, 0).prompt == [msg("user", "B?")]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        # the last message is the user's: no reply to train on
        ({"prompt": "q", "chosen": [msg("user", "q")], "rejected": "x"}, "last_not_assistant"),
        (
            {
                "prompt": "q",
                "chosen": [msg("user", "q"), msg("assistant", "a")],
                "rejected": [msg("user", "q"), msg("assistant", "b"), msg("user", "more?")],
            },
            "last_not_assistant",
        ),
        # chosen and rejected answer different conversations
        (
            {
                "prompt": "q",
                "chosen": [msg("user", "q"), msg("assistant", "a")],
                "rejected": [msg("user", "z"), msg("assistant", "b")],
            },
            "prompt_mismatch",
        ),
        (
            {
                "prompt": "B?",
                "chosen": [
                    msg("user", "A?"),
                    msg("assistant", "x"),
                    msg("user", "B?"),
                    msg("assistant", "b"),
                ],
                "rejected": [
                    msg("user", "A?"),
                    msg("assistant", "y"),
                    msg("user", "B?"),
                    msg("assistant", "c"),
                ],
            },
            "prompt_mismatch",
        ),
        (
            {
                "prompt": "B?",
                "chosen": [
                    msg("user", "A?"),
                    msg("assistant", "x"),
                    msg("user", "B?"),
                    msg("assistant", "b"),
                ],
                "rejected": [msg("user", "B?"), msg("assistant", "c")],
            },
            "prompt_mismatch",
        ),
    ],
)
def test_uf_unusable_rows_name_their_reason(row, reason):
    with pytest.raises(UnusableRow, match="ultrafeedback row 12") as e:
        ultrafeedback_to_example(row, 12)
    assert e.value.reason == reason


def test_uf_unusable_rows_are_dropped_and_counted(tmp_path):
    good = {"prompt": "q", "chosen": [msg("user", "q"), msg("assistant", "a")], "rejected": "b"}
    rows = [
        good,
        {"prompt": "q", "chosen": [msg("user", "q")], "rejected": "b"},
        {
            "prompt": "q",
            "chosen": [msg("user", "q"), msg("assistant", "a")],
            "rejected": [msg("user", "other"), msg("assistant", "b")],
        },
        good,
    ]
    report = CleaningReport()
    path = write_rows(tmp_path / "uf.jsonl", rows)
    examples = load_preference_dataset("ultrafeedback", path, report=report)
    assert [e.id for e in examples] == ["uf-0", "uf-3"]
    _, report = clean_pairs(examples, report=report)
    assert report.dropped == {
        **dict.fromkeys(PAIR_DROP_REASONS, 0),
        "turn_in_response": 0,
        "last_not_assistant": 1,
        "prompt_mismatch": 1,
    }
    assert report.total == len(rows)


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "q", "chosen": [], "rejected": "x"},
        {"prompt": "q", "chosen": [{"role": "robot", "content": "a"}], "rejected": "x"},
        {"chosen": "a", "rejected": "b"},  # no prompt and no history
        {"chosen": [msg("assistant", "a")], "rejected": "b"},  # no prompt and no history
    ],
)
def test_uf_malformed_rows_raise_naming_the_index(row):
    with pytest.raises(ValueError, match="row 12") as e:
        ultrafeedback_to_example(row, 12)
    assert not isinstance(e.value, UnusableRow)


# --- loading -----------------------------------------------------------------------------------


def test_parquet_file_loads_like_jsonl(tmp_path):
    pandas = pytest.importorskip("pandas")
    parquet = tmp_path / "uf.parquet"
    pandas.read_json(UF_FILE, lines=True).to_parquet(parquet)
    from_parquet = load_preference_dataset("ultrafeedback", str(parquet))
    from_jsonl = load_preference_dataset("ultrafeedback", str(UF_FILE))
    assert [e.to_dict() for e in from_parquet] == [e.to_dict() for e in from_jsonl]


def test_sample_indices_is_seeded_sorted_and_spread_over_the_rows():
    picked = sample_indices(100, 10)
    assert picked == sorted(set(picked)) and len(picked) == 10
    assert picked == sample_indices(100, 10, SAMPLE_SEED)  # same seed, same rows
    assert picked != sample_indices(100, 10, SAMPLE_SEED + 1)
    assert picked != list(range(10))
    assert sample_indices(5, None) == sample_indices(5, 9) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="sample size must be >= 0, got -1"):
        sample_indices(5, -1)


def test_limit_is_a_seeded_sample_not_the_head(tmp_path):
    # A dump sorted by subset, as HH-RLHF's are: the head would be one subset only.
    rows = [hh_row(f"helpful {i}?") for i in range(20)] + [
        hh_row(f"harmless {i}?") for i in range(20)
    ]
    path = write_rows(tmp_path / "sorted.jsonl", rows)
    examples = load_preference_dataset("hh-rlhf", path, limit=10)
    ids = [e.id for e in examples]
    assert len(ids) == 10 and ids != [f"hh-{i}" for i in range(10)]
    subsets = {e.prompt[0]["content"].split()[0] for e in examples}
    assert subsets == {"helpful", "harmless"}
    # ids keep the row's index in the file, rows come in file order, and the sample is repeatable
    assert ids == [f"hh-{i}" for i in sample_indices(len(rows), 10)]
    for example in examples:
        index = int(example.id.removeprefix("hh-"))
        assert example == hh_rlhf_to_example(rows[index], index)
    assert [e.to_dict() for e in load_preference_dataset("hh-rlhf", path, limit=10)] == [
        e.to_dict() for e in examples
    ]
    other = load_preference_dataset("hh-rlhf", path, limit=10, seed=SAMPLE_SEED + 1)
    assert [e.id for e in other] != ids


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
