"""The synthetic suite: determinism, disjoint splits, and an oracle that grades correctly."""

import math
import random
from collections import Counter
from statistics import mean

import pytest

from orpo.data.schema import read_jsonl
from orpo.data.synthetic import (
    FAMILIES,
    PARTIAL_CREDIT_CAP,
    STRAY_TEXT_PENALTY,
    corpus_texts,
    generate_suite,
    oracle_reward,
    write_suite,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def suite():
    return generate_suite(n_train=200, n_eval=40, n_test=40, seed=0)


def all_examples(suite):
    return [example for split in ("train", "eval", "test") for example in suite[split]]


def dicts(suite):
    return {split: [e.to_dict() for e in examples] for split, examples in suite.items()}


def test_there_are_at_least_three_families():
    assert len(FAMILIES) >= 3
    assert {"add", "sort", "reverse"} <= set(FAMILIES)


def test_sizes_ids_and_balance(suite):
    assert {split: len(examples) for split, examples in suite.items()} == {
        "train": 200,
        "eval": 40,
        "test": 40,
    }
    for examples in suite.values():
        counts = Counter(e.metadata["family"] for e in examples)
        assert set(counts) == set(FAMILIES)
        assert max(counts.values()) - min(counts.values()) <= 1
    ids = [e.id for e in all_examples(suite)]
    assert len(set(ids)) == len(ids)
    for example in all_examples(suite):
        family = example.metadata["family"]
        assert example.id.startswith(f"syn-{family}-") and len(example.id.split("-")[-1]) == 6


def test_same_seed_same_suite_other_seed_other_suite(suite):
    assert dicts(generate_suite(200, 40, 40, seed=0)) == dicts(suite)
    assert dicts(generate_suite(200, 40, 40, seed=1)) != dicts(suite)


def test_test_split_does_not_depend_on_the_training_size(suite):
    bigger = generate_suite(n_train=400, n_eval=40, n_test=40, seed=0)
    assert dicts(bigger)["test"] == dicts(suite)["test"]


def test_no_prompt_in_two_splits(suite):
    prompts = {
        split: {e.prompt[-1]["content"] for e in examples} for split, examples in suite.items()
    }
    assert not prompts["train"] & prompts["eval"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["eval"] & prompts["test"]
    # Stronger: a question never repeats in any phrasing.
    questions = [
        (e.metadata["family"], str(e.metadata.get("operands") or e.metadata.get("items")))
        for e in all_examples(suite)
    ]
    assert len(set(questions)) == len(questions)


def test_short_prompts_and_answers_for_tiny_models(suite):
    for example in all_examples(suite):
        assert example.prompt == [{"role": "user", "content": example.prompt[0]["content"]}]
        assert len(example.prompt[0]["content"].split()) <= 16
        assert len(example.chosen.split()) <= 10
        assert len(example.rejected.split()) <= 10


def test_chosen_scores_one_and_rejected_strictly_less(suite):
    for example in all_examples(suite):
        assert example.chosen != example.rejected
        assert oracle_reward(example.metadata, example.chosen) == 1.0
        assert 0.0 <= oracle_reward(example.metadata, example.rejected) < 1.0


def test_near_misses_are_near(suite):
    # A realistic mistake keeps some credit on average, and every kind of mistake shows up.
    kinds = Counter((e.metadata["family"], e.metadata["near_miss"]) for e in all_examples(suite))
    assert {family for family, _ in kinds} == set(FAMILIES)
    mean = sum(oracle_reward(e.metadata, e.rejected) for e in all_examples(suite)) / 280
    assert 0.2 < mean < PARTIAL_CREDIT_CAP


ADD = {"family": "add", "answer": "8 5", "operands": [27, 58]}
SORT = {"family": "sort", "answer": "1 2 5 9", "items": [5, 2, 9, 1]}
REVERSE = {
    "family": "reverse",
    "answer": "sky blue fox red",
    "items": ["red", "fox", "blue", "sky"],
}
MAX = {"family": "max", "answer": "9", "items": [4, 9, 2, 7]}


@pytest.mark.parametrize(
    ("metadata", "response", "expected"),
    [
        # add: digits graded from the units column; "85" and "8 5" are the same number
        (ADD, "8 5", 1.0),
        (ADD, "85", 1.0),
        (ADD, " 8 5.\n", 1.0),
        (ADD, "8 4", 0.9 * 1 / 2),  # units digit off by one
        (ADD, "7 5", 0.9 * 1 / 2),  # forgot the carry
        (ADD, "5 8", 0.0),
        (ADD, "1 8 5", 0.9 * 2 / 3),
        # sort: longest common subsequence over the longer length
        (SORT, "1 2 5 9", 1.0),
        (SORT, "1, 2, 5, 9", 1.0),
        (SORT, "1 5 2 9", 0.9 * 3 / 4),  # one adjacent swap
        (SORT, "1 2 9", 0.9 * 3 / 4),  # one item dropped
        (SORT, "5 2 9 1", 0.9 * 2 / 4),  # the input unchanged
        (SORT, "9 5 2 1", 0.9 * 1 / 4),
        # reverse
        (REVERSE, "sky blue fox red", 1.0),
        (REVERSE, "Sky Blue Fox Red", 1.0),
        (REVERSE, "sky fox blue red", 0.9 * 3 / 4),
        (REVERSE, "sky blue red", 0.9 * 3 / 4),
        (REVERSE, "red fox blue sky", 0.9 * 1 / 4),
        # max: nothing for a number that is not an item; an item earns half the partial credit,
        # the other half by how many of the distinct smaller items it beats (here 3: 2, 4, 7)
        (MAX, "9", 1.0),
        (MAX, "7", 0.9 * (0.5 + 0.5 * 2 / 3)),  # second largest
        (MAX, "4", 0.9 * (0.5 + 0.5 * 1 / 3)),  # first item
        (MAX, "2", 0.9 * 0.5),  # smallest
        (MAX, "8", 0.0),  # close to 9 but not an item: a constant guess earns nothing here
        (MAX, "0", 0.0),
        (MAX, "9 9", 0.0),  # read digit by digit as 99, not an item
        # text outside the answer span costs STRAY_TEXT_PENALTY, the same in every family
        (ADD, "8 5 done", 0.95),
        (ADD, "the sum is 85.", 0.95),
        (SORT, "1 2 5 9 and that is all", 0.95),
        (REVERSE, "sky blue fox red. Done!", 0.95),
        (MAX, "9 is the largest", 0.95),
        (SORT, "1 2 9 ok", 0.9 * 3 / 4 - 0.05),  # a near miss pays the same fixed amount
        (ADD, "so 5 8", 0.0),  # never below 0
        # answer-shaped tokens belong to the span: they change the answer, they are not stray
        (ADD, "8 5 3", 0.0),  # 853
        (SORT, "1 2 5 9 9", 0.9 * 4 / 5),
        (REVERSE, "sky blue fox red moon", 0.9 * 4 / 5),
    ],
)
def test_hand_made_answers_are_graded(metadata, response, expected):
    assert oracle_reward(metadata, response) == pytest.approx(expected)


# --- a grader that constant answers cannot farm ------------------------------------------------


def sample_problems(name, n=200, seed=0):
    rng = random.Random(seed)
    return [FAMILIES[name].make_problem(rng) for _ in range(n)]


def metadata_of(name, problem):
    return {"family": name, "answer": problem.answer, **problem.inputs}


def rejected_score(name, problem):
    """Expected oracle score of the data set's rejected response to this problem: the generator
    draws a kind of mistake uniformly, then one of that kind's candidates."""
    metadata = metadata_of(name, problem)
    kinds = FAMILIES[name].near_misses(problem).values()
    return mean(mean(oracle_reward(metadata, miss) for miss in misses) for misses in kinds)


def constant_attacks(problems):
    """The strongest prompt-independent answers we know of: the most common answer, the most
    common token, a typical answer (the commonest token at each position of the commonest
    length), every single digit, a digit list, a word list, a generic word, nothing."""
    answers = [problem.answer.split() for problem in problems]
    length = Counter(len(answer) for answer in answers).most_common(1)[0][0]
    typical = [
        Counter(answer[i] for answer in answers if len(answer) == length).most_common(1)[0][0]
        for i in range(length)
    ]
    return {
        Counter(problem.answer for problem in problems).most_common(1)[0][0],
        Counter(token for answer in answers for token in answer).most_common(1)[0][0],
        " ".join(typical),
        *(str(digit) for digit in range(10)),
        "0 1 2 3 4 5 6 7 8 9",
        "sky blue fox red",
        "answer",
        "",
    }


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_no_constant_answer_scores_like_a_near_miss(name):
    problems = sample_problems(name)
    near_miss_mean = mean(rejected_score(name, problem) for problem in problems)
    assert 0.3 < near_miss_mean < PARTIAL_CREDIT_CAP
    for attack in constant_attacks(problems):
        attack_mean = mean(oracle_reward(metadata_of(name, p), attack) for p in problems)
        # A clear margin, not a tie-break: otherwise a method that learned one answer for all
        # prompts would win against one that makes realistic mistakes.
        assert attack_mean < near_miss_mean - 0.1, (attack, attack_mean, near_miss_mean)


STRAY_TEXT = [" done", ". I hope this helps, tell me if you need more!"]


def test_right_answer_with_stray_text_scores_the_same_in_every_family():
    scores = set()
    for name in FAMILIES:
        for problem in sample_problems(name):
            metadata = metadata_of(name, problem)
            best_near_miss = max(
                oracle_reward(metadata, miss)
                for misses in FAMILIES[name].near_misses(problem).values()
                for miss in misses
            )
            for stray in STRAY_TEXT:
                score = oracle_reward(metadata, problem.answer + stray)
                assert best_near_miss < score < 1.0, (problem.answer + stray, best_near_miss)
                scores.add(score)
    assert scores == {1.0 - STRAY_TEXT_PENALTY}


JUNK = [
    "",
    "   ",
    "\n\t",
    "?!.,;",
    "ありがとう 🙏",
    "<unk></s><pad>",
    "lorem ipsum dolor sit amet",
    "x" * 100_000,
    "9" * 10_000,  # huge number: no int() overflow
    " ".join(["1 2 5 9"] * 5_000),  # the answer buried in repetition
    None,
]


@pytest.mark.parametrize("metadata", [ADD, SORT, REVERSE, MAX], ids=lambda m: m["family"])
def test_junk_and_empty_responses_never_raise_and_stay_in_range(metadata):
    for response in JUNK:
        reward = oracle_reward(metadata, response)
        assert isinstance(reward, float) and math.isfinite(reward)
        assert 0.0 <= reward < 0.05, (response[:20] if response else response, reward)
    assert oracle_reward(metadata, "") == 0.0
    assert oracle_reward(metadata, None) == 0.0


def test_rewards_of_every_response_to_every_example_are_in_range(suite):
    examples = all_examples(suite)[:40]
    responses = [e.chosen for e in examples] + [e.rejected for e in examples] + JUNK[:7]
    for example in examples:
        for response in responses:
            assert 0.0 <= oracle_reward(example.metadata, response) <= 1.0


def test_oracle_rejects_unknown_family():
    with pytest.raises(ValueError, match="unknown task family 'div'"):
        oracle_reward({"family": "div", "answer": "1"}, "1")
    # Missing inputs fail on every response, not only on the wrong ones that read them.
    with pytest.raises(ValueError, match="max metadata has no 'items'"):
        oracle_reward({"family": "max", "answer": "9"}, "9")


def test_family_subset_and_corpus():
    suite = generate_suite(6, 2, 2, seed=3, families=["sort", "max"])
    examples = [e for split in suite.values() for e in split]
    assert {e.metadata["family"] for e in examples} == {"sort", "max"}
    texts = corpus_texts(examples)
    assert len(texts) == 3 * len(examples)
    assert examples[0].prompt[0]["content"] in texts and examples[0].rejected in texts


def test_zero_sized_splits_are_allowed():
    suite = generate_suite(4, 0, 0, seed=0)
    assert (len(suite["train"]), suite["eval"], suite["test"]) == (4, [], [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": -1}, "n_train must be an integer >= 0"),
        ({"n_eval": 2.5}, "n_eval must be an integer >= 0"),
        ({"families": ["add", "divide"]}, r"unknown task families \['divide'\]"),
        ({"families": []}, "at least one task family"),
        ({"families": ["add", "add"]}, "listed twice"),
        ({"seed": "0"}, "seed must be an integer"),
        ({"n_train": 9000, "families": ["add"]}, "'add' has only 8100 distinct questions"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    arguments = {"n_train": 4, "n_eval": 2, "n_test": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate_suite(**arguments)


def test_write_suite_round_trips(tmp_path):
    paths = write_suite(tmp_path / "suite", 8, 4, 4, seed=5, families=None)
    assert {split: path.name for split, path in paths.items()} == {
        "train": "train.jsonl",
        "eval": "eval.jsonl",
        "test": "test.jsonl",
    }
    generated = generate_suite(8, 4, 4, seed=5)
    for split, path in paths.items():
        assert [e.to_dict() for e in read_jsonl(path)] == [e.to_dict() for e in generated[split]]
