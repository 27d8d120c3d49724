"""The paper's cleaning: which pairs go, under which reason, and the empty-result error."""

import pytest

from orpo.data.clean import (
    DROP_REASONS,
    ROW_DROP_REASONS,
    CleaningReport,
    EmptyDatasetError,
    clean_pairs,
)
from orpo.data.schema import PreferenceExample

pytestmark = pytest.mark.unit


def pair(chosen: str, rejected: str, prompt: str = "q?", id: str = "x") -> PreferenceExample:
    return PreferenceExample(
        id=id, prompt=[{"role": "user", "content": prompt}], chosen=chosen, rejected=rejected
    )


def test_counts_each_reason_once_and_keeps_order():
    examples = [
        pair("good", "bad", id="keep-1"),
        pair(" same ", "same"),  # identical after strip
        pair("   ", "bad"),  # whitespace only is empty
        pair("good", ""),
        pair("good", "bad", prompt="  "),
        pair("", ""),  # both empty: counted as empty_chosen, not identical
        pair("Good", "good", id="keep-2"),  # case differs: a real preference
    ]
    kept, report = clean_pairs(examples)
    assert [e.id for e in kept] == ["keep-1", "keep-2"]
    assert kept[0] is examples[0]  # kept unchanged
    assert report.kept == 2
    assert report.dropped == {
        **dict.fromkeys(ROW_DROP_REASONS, 0),  # only the adapters count those
        "empty_prompt": 1,
        "empty_chosen": 2,
        "empty_rejected": 1,
        "identical": 1,
    }
    assert report.total == len(examples)


def test_summary_names_every_reason():
    _, report = clean_pairs([pair("a", "b"), pair("a", "a")])
    assert report.summary() == (
        "kept 1 of 2 pairs; dropped 1 "
        "(turn_in_response=0, last_not_assistant=0, prompt_mismatch=0, "
        "empty_prompt=0, empty_chosen=0, empty_rejected=0, identical=1)"
    )


def test_nothing_left_raises_with_counts():
    with pytest.raises(EmptyDatasetError, match=r"kept 0 of 3 .*empty_rejected=1, identical=2"):
        clean_pairs([pair("a", "a"), pair("b", "b"), pair("c", "")])


def test_empty_input_raises_a_value_error():
    with pytest.raises(ValueError, match="no preference pairs left"):
        clean_pairs([])


def test_fresh_report_has_every_reason_at_zero():
    assert CleaningReport().dropped == dict.fromkeys(DROP_REASONS, 0)


def test_a_given_report_keeps_the_rows_the_loader_dropped():
    loaded = CleaningReport()
    loaded.dropped["turn_in_response"] = 2  # as load_preference_dataset(..., report=loaded) does
    kept, report = clean_pairs([pair("a", "b"), pair("a", "a")], report=loaded)
    assert report is loaded
    assert (report.kept, report.total) == (1, 4)
    assert report.dropped["turn_in_response"] == 2 and report.dropped["identical"] == 1
