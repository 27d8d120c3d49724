"""The embedded default data set: small preference tasks with a programmatic oracle.

Generated offline and deterministically from a seed. The models that learn it are tiny
randomly initialised transformers with a ~500-token byte-level BPE tokenizer, so prompts are
short (<= 10 words), answers shorter (<= 6 tokens) and the vocabulary is digits plus a few
dozen words. Four families:

- add:     "add 2 7 and 5 8"             -> "8 5"       (two-digit operands)
- sort:    "sort 5 2 9 1"                -> "1 2 5 9"   (3-6 single digits, repeats allowed)
- reverse: "reverse red fox blue sky"    -> "sky blue fox red" (3-5 distinct words)
- max:     "max of 4 9 2 7"              -> "9"         (3-6 single digits)

Numbers are written digit by digit, separated by spaces ("2 7" is twenty-seven). The tokenizer
splits on spaces before merging, so every digit is one token whatever merges BPE learns; with
whole numbers a 500-token vocabulary would make some numbers one token and others two, and a
tiny model would have to memorise 100 opaque number tokens instead of digit rules.

chosen is the correct answer; rejected is a realistic near miss (a digit off by one, a
forgotten carry, one adjacent swap, one dropped item, the unchanged input, ...). The oracle
(`oracle_reward`) is the ground truth the judges (reward models, win rates) are checked against.
It grades a response in three steps, the same in every family:

1. Answer span. The response is lower-cased and split into words and numbers (punctuation
   dropped). The span is the first unbroken run of answer-shaped tokens: digits in add, sort and
   max, words of `WORDS` in reverse. In add and max the span is one number written digit by
   digit ("8 5" and "85" are both eighty-five); in sort and reverse it is a list of items.
2. Credit of the span. Exactly the answer: 1.0. Anything else: at most `PARTIAL_CREDIT_CAP`
   times the family's similarity. add: share of digit columns right, aligned from the units
   digit. sort, reverse: longest common subsequence over the longer length. max: nothing for a
   number that is not one of the items (a constant guess such as "8" earns credit only where it
   is an item); half for picking an item, the other half by how many of the distinct smaller
   items it beats.
3. Text outside the span (stray words after the answer, a sentence around it) costs a fixed
   `STRAY_TEXT_PENALTY` whatever its length and whatever the family; the reward never drops
   below 0.0. So a right answer followed by stray text scores 0.95 in every family: below the
   bare answer, above every wrong answer. No span at all (empty, junk, None) scores 0.0.

Rule 2 is chosen so that no constant answer, asked of every prompt of a family, averages as
much as the data set's own near misses: tests/unit/test_synthetic.py checks the strongest
constants (the most common answer, every single digit, a typical answer, a word, nothing).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from orpo.data.schema import PreferenceExample, write_jsonl

SPLITS = ("train", "eval", "test")
PARTIAL_CREDIT_CAP = 0.9
"""Best reward for a response whose answer span is not exactly right: every near miss is below."""
STRAY_TEXT_PENALTY = 0.05
"""Fixed cost of any text outside the answer span, in every family. Below 1 - PARTIAL_CREDIT_CAP,
so the right answer with stray text (0.95) still beats every wrong answer."""
ITEM_CREDIT = 0.5
"""max: share of the partial credit for answering with one of the items at all (the other share
grows with the items it beats), so even the smallest item beats a constant guess on average."""

WORDS = (
    "red", "blue", "green", "gold", "fox", "cat", "dog", "owl", "sky", "sun", "moon", "star",
    "tree", "bird", "fish", "frog", "rain", "snow", "hill", "sea", "road", "boat", "cold", "warm",
)  # fmt: skip
"""Vocabulary of the reverse family (none of them is an instruction word)."""


@dataclass(frozen=True)
class Problem:
    """One question of a family, before it becomes a `PreferenceExample`."""

    key: tuple
    """Identity of the question whatever the phrasing: keys never repeat within a suite."""
    prompt: str
    answer: str
    inputs: dict = field(default_factory=dict)
    """What the question was made from (operands, items); stored in metadata."""


@dataclass(frozen=True)
class TaskFamily:
    """A task family: how to pose a question, how to get it slightly wrong, how to grade."""

    name: str
    description: str
    capacity: int
    """Number of distinct questions (keys) the family can pose."""
    make_problem: Callable[[random.Random], Problem]
    near_misses: Callable[[Problem], dict[str, list[str]]]
    """Wrong answers by kind of mistake, e.g. {"dropped_item": [...]}; never the answer."""
    similarity: Callable[[list[str], list[str], dict], float]
    """Partial credit in [0, 1] of the answer span against the answer tokens (not exact), given
    the example's metadata (max reads its items)."""
    is_answer_token: Callable[[str], bool] = str.isdigit
    """Whether a response token can belong to an answer: it delimits the answer span."""
    canonical: Callable[[list[str]], list[str]] = lambda tokens: tokens
    """Rewrites the answer span before grading (e.g. "85" -> ["8", "5"] for add)."""
    needs: tuple[str, ...] = ()
    """Metadata keys the grading reads besides "answer"."""


# --- response parsing and partial credit -------------------------------------------------------

_NOT_WORD = re.compile(r"[^a-z0-9]+")


def response_tokens(response: object) -> list[str]:
    """Lower-cased words and numbers of a model response; punctuation and non-ASCII dropped.

    Anything that is not a string (None from a failed generation) gives no tokens.
    """
    if not isinstance(response, str):
        return []
    return _NOT_WORD.sub(" ", response.lower()).split()


def answer_span(
    tokens: list[str], is_answer_token: Callable[[str], bool]
) -> tuple[list[str], bool]:
    """The first unbroken run of answer-shaped tokens, and whether any token lies outside it."""
    start = 0
    while start < len(tokens) and not is_answer_token(tokens[start]):
        start += 1
    end = start
    while end < len(tokens) and is_answer_token(tokens[end]):
        end += 1
    return tokens[start:end], end - start < len(tokens)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)), rolling row)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def list_similarity(tokens: list[str], expected: list[str], metadata: dict) -> float:
    """LCS / longer length: one swap or one dropped item loses one item's worth of credit."""
    # Only a prefix can matter for the LCS; the full length still counts in the denominator, so
    # long junk scores near 0 and costs no more than a short response to grade.
    considered = tokens[: 2 * len(expected) + 8]
    return _lcs_length(considered, expected) / max(len(tokens), len(expected))


def place_value_similarity(tokens: list[str], expected: list[str], metadata: dict) -> float:
    """Fraction of digit positions right, aligned from the units digit as in written sums."""
    # Per-digit credit rather than numeric closeness: sums cluster around 110, so a constant
    # near there would be numerically close to most answers, while it rarely shares digits.
    # strict=False on purpose: a longer or shorter number is graded on the columns it has.
    columns = zip(reversed(tokens), reversed(expected), strict=False)
    matches = sum(got == want for got, want in columns)
    return matches / max(len(tokens), len(expected))


def item_rank_similarity(tokens: list[str], expected: list[str], metadata: dict) -> float:
    """For "the largest item": 0 unless the number is an item, then more the more items it beats.

    Numeric closeness would reward a constant: the largest of 3-6 digits is usually 8 or 9, so
    "8" would be close to almost every answer. Requiring an item makes the guess depend on the
    prompt; ranking among the distinct items keeps the second largest above the smallest.
    """
    values = sorted({int(item) for item in metadata["items"]})
    number = "".join(tokens)
    # String comparison first: int() of a huge digit string is slow and, past 4300 digits, an
    # error; a leading zero ("0 7") is not how an item is written.
    if number not in {str(value) for value in values}:
        return 0.0
    beaten, beatable = values.index(int(number)), max(1, len(values) - 1)
    return ITEM_CREDIT + (1 - ITEM_CREDIT) * beaten / beatable


def _digits_of_number(tokens: list[str]) -> list[str]:
    # "85" and "8 5" are the same number: grade digits, not tokenisation.
    return list("".join(tokens))


def _is_word(token: str) -> bool:
    return token in WORDS


# --- the families ------------------------------------------------------------------------------


def _spaced(number: int) -> str:
    return " ".join(str(number))


def _join(items: Iterable[object]) -> str:
    return " ".join(str(item) for item in items)


def _make_add(rng: random.Random) -> Problem:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    template = rng.choice(("add {a} and {b}", "what is {a} plus {b}", "sum of {a} and {b}"))
    return Problem(
        key=(a, b),
        prompt=template.format(a=_spaced(a), b=_spaced(b)),
        answer=_spaced(a + b),
        inputs={"operands": [a, b]},
    )


def _add_near_misses(problem: Problem) -> dict[str, list[str]]:
    a, b = problem.inputs["operands"]
    digits = [int(d) for d in str(a + b)]
    off_by_one = []
    for position, digit in enumerate(digits):
        for wrong in (digit - 1, digit + 1):
            if 0 <= wrong <= 9 and not (position == 0 and wrong == 0):
                off_by_one.append(_join(digits[:position] + [wrong] + digits[position + 1 :]))
    # Column by column with the carries forgotten: 27 + 58 -> "7 5" instead of "8 5".
    no_carry = "".join(str((int(x) + int(y)) % 10) for x, y in zip(str(a), str(b), strict=True))
    misses = {"digit_off_by_one": off_by_one, "forgot_carry": [_spaced(int(no_carry))]}
    if len(digits) == 3:  # the carry out of the tens column left off: 85 + 38 -> "2 3"
        misses["dropped_carry_out"] = [_join(digits[1:])]
    return _without_answer(misses, problem.answer)


def _make_digit_list(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]


def _make_sort(rng: random.Random) -> Problem:
    items = _make_digit_list(rng)
    template = rng.choice(("sort {x}", "sort these numbers {x}", "put {x} in order"))
    return Problem(
        key=tuple(items),
        prompt=template.format(x=_join(items)),
        answer=_join(sorted(items)),
        inputs={"items": items},
    )


def _sort_near_misses(problem: Problem) -> dict[str, list[str]]:
    ordered = sorted(problem.inputs["items"])
    return _without_answer(
        {
            "adjacent_swap": _adjacent_swaps(ordered),
            "dropped_item": _dropped_items(ordered),
            "unsorted": [_join(problem.inputs["items"])],
        },
        problem.answer,
    )


def _make_reverse(rng: random.Random) -> Problem:
    words = rng.sample(WORDS, rng.randint(3, 5))
    template = rng.choice(("reverse {x}", "reverse the words {x}", "say {x} backwards"))
    return Problem(
        key=tuple(words),
        prompt=template.format(x=_join(words)),
        answer=_join(reversed(words)),
        inputs={"items": words},
    )


def _reverse_near_misses(problem: Problem) -> dict[str, list[str]]:
    reversed_words = list(reversed(problem.inputs["items"]))
    return _without_answer(
        {
            "adjacent_swap": _adjacent_swaps(reversed_words),
            "dropped_item": _dropped_items(reversed_words),
            "not_reversed": [_join(problem.inputs["items"])],
        },
        problem.answer,
    )


def _make_max(rng: random.Random) -> Problem:
    items = _make_digit_list(rng)
    while len(set(items)) < 2:  # all equal: no wrong answer would come from the list
        items = _make_digit_list(rng)
    template = rng.choice(("max of {x}", "largest of {x}", "pick the biggest of {x}"))
    return Problem(
        key=tuple(items),
        prompt=template.format(x=_join(items)),
        answer=str(max(items)),
        inputs={"items": items},
    )


def _max_near_misses(problem: Problem) -> dict[str, list[str]]:
    items = problem.inputs["items"]
    below_max = [item for item in items if item < max(items)]
    return _without_answer(
        {
            "second_largest": [str(max(below_max))],
            "first_item": [str(items[0])],
            "smallest": [str(min(items))],
        },
        problem.answer,
    )


def _adjacent_swaps(items: list) -> list[str]:
    return [
        _join(items[:i] + [items[i + 1], items[i]] + items[i + 2 :])
        for i in range(len(items) - 1)
        if items[i] != items[i + 1]
    ]


def _dropped_items(items: list) -> list[str]:
    return [_join(items[:i] + items[i + 1 :]) for i in range(len(items))]


def _without_answer(misses: dict[str, list[str]], answer: str) -> dict[str, list[str]]:
    """Drop candidates equal to the answer (or empty), de-duplicate, drop empty kinds."""
    cleaned = {}
    for kind, candidates in misses.items():
        kept = list(dict.fromkeys(c for c in candidates if c and c != answer))
        if kept:
            cleaned[kind] = kept
    return cleaned


FAMILIES: dict[str, TaskFamily] = {
    "add": TaskFamily(
        name="add",
        description="sum of two two-digit numbers, written digit by digit",
        capacity=90 * 90,
        make_problem=_make_add,
        near_misses=_add_near_misses,
        similarity=place_value_similarity,
        canonical=_digits_of_number,
    ),
    "sort": TaskFamily(
        name="sort",
        description="3-6 digits in ascending order",
        capacity=sum(10**n for n in range(3, 7)),
        make_problem=_make_sort,
        near_misses=_sort_near_misses,
        similarity=list_similarity,
    ),
    "reverse": TaskFamily(
        name="reverse",
        description="3-5 distinct words in reverse order",
        capacity=sum(math.perm(len(WORDS), n) for n in range(3, 6)),
        make_problem=_make_reverse,
        near_misses=_reverse_near_misses,
        similarity=list_similarity,
        is_answer_token=_is_word,
    ),
    "max": TaskFamily(
        name="max",
        description="largest of 3-6 digits (not all equal)",
        capacity=sum(10**n - 10 for n in range(3, 7)),
        make_problem=_make_max,
        near_misses=_max_near_misses,
        similarity=item_rank_similarity,
        canonical=_digits_of_number,
        needs=("items",),
    ),
}


# --- the oracle --------------------------------------------------------------------------------


def oracle_reward(metadata: dict, response: str) -> float:
    """Graded reward in [0, 1] of a model `response` to the example with this `metadata`.

    The module docstring gives the rule: 1.0 when the answer span is exactly the answer,
    otherwise `PARTIAL_CREDIT_CAP` times the family's similarity (e.g. 0.9 * 3/4 for a sorted
    list with one item dropped), minus `STRAY_TEXT_PENALTY` if any text lies outside the span;
    0.0 for a response with no answer-shaped token (empty, junk, None). Never raises on the
    response; raises ValueError for metadata without a known family, an answer, or the inputs
    the family grades with.
    """
    family = _family_of(metadata)
    for key in ("answer", *family.needs):
        if key not in metadata:
            raise ValueError(f"{family.name} metadata has no {key!r}: {metadata!r}")
    span, stray_text = answer_span(response_tokens(response), family.is_answer_token)
    if not span:
        return 0.0
    credit = _span_credit(family, family.canonical(span), metadata)
    return max(0.0, credit - STRAY_TEXT_PENALTY) if stray_text else credit


def _span_credit(family: TaskFamily, span: list[str], metadata: dict) -> float:
    expected = str(metadata["answer"]).split()
    if span == expected:
        return 1.0
    similarity = min(1.0, max(0.0, family.similarity(span, expected, metadata)))
    return PARTIAL_CREDIT_CAP * similarity


def _family_of(metadata: dict) -> TaskFamily:
    name = metadata.get("family") if isinstance(metadata, dict) else None
    if name not in FAMILIES:
        raise ValueError(f"unknown task family {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


# --- generating a suite ------------------------------------------------------------------------


def generate_suite(
    n_train: int,
    n_eval: int,
    n_test: int,
    seed: int = 0,
    families: list[str] | None = None,
) -> dict[str, list[PreferenceExample]]:
    """Generate the "train", "eval" and "test" splits: deterministic for a seed.

    Within a split the families take turns (counts differ by at most one) and the examples are
    shuffled. A question (its key: operands or items) never appears twice in a suite, in any
    phrasing, so no prompt is shared between splits. The test split is drawn first, then eval,
    then train: the test set depends only on (seed, n_test, families), so runs with different
    training sizes are scored on the same questions. Ids are "syn-<family>-<000123>".
    """
    sizes = {"train": n_train, "eval": n_eval, "test": n_test}
    for split, size in sizes.items():
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"n_{split} must be an integer >= 0, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    names = _resolve_families(families)
    plans = {split: [names[i % len(names)] for i in range(size)] for split, size in sizes.items()}
    _check_capacity(names, plans)

    rng = random.Random(seed)
    seen_keys: dict[str, set[tuple]] = {name: set() for name in names}
    counters = dict.fromkeys(names, 0)
    suite: dict[str, list[PreferenceExample]] = {}
    for split in ("test", "eval", "train"):
        examples = []
        for name in plans[split]:
            family = FAMILIES[name]
            problem = _draw_new_problem(family, rng, seen_keys[name])
            examples.append(_make_example(family, problem, counters[name], rng))
            counters[name] += 1
        rng.shuffle(examples)
        suite[split] = examples
    return {split: suite[split] for split in SPLITS}


def _resolve_families(families: list[str] | None) -> list[str]:
    names = list(FAMILIES) if families is None else list(families)
    if not names:
        raise ValueError("families must name at least one task family")
    unknown = [name for name in names if name not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown task families {unknown}; expected some of {list(FAMILIES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"task families listed twice: {names}")
    return names


def _check_capacity(names: list[str], plans: dict[str, list[str]]) -> None:
    for name in names:
        wanted = sum(plan.count(name) for plan in plans.values())
        if wanted > FAMILIES[name].capacity:
            raise ValueError(
                f"task family {name!r} has only {FAMILIES[name].capacity} distinct questions, "
                f"the requested sizes need {wanted}"
            )


def _draw_new_problem(family: TaskFamily, rng: random.Random, seen: set[tuple]) -> Problem:
    # Rejection sampling ends: _check_capacity guarantees unseen keys remain.
    while True:
        problem = family.make_problem(rng)
        if problem.key not in seen:
            seen.add(problem.key)
            return problem


def _make_example(
    family: TaskFamily, problem: Problem, number: int, rng: random.Random
) -> PreferenceExample:
    misses = family.near_misses(problem)
    kind = rng.choice(list(misses))  # pick the kind of mistake first, so kinds are balanced
    rejected = rng.choice(misses[kind])
    metadata = {"family": family.name, "answer": problem.answer, **problem.inputs}
    metadata["near_miss"] = kind
    # The promise every judge test leans on; cheap enough to check on every example.
    if oracle_reward(metadata, problem.answer) != 1.0 or oracle_reward(metadata, rejected) >= 1.0:
        raise RuntimeError(f"{family.name}: near miss {rejected!r} vs answer {problem.answer!r}")
    return PreferenceExample(
        id=f"syn-{family.name}-{number:06d}",
        prompt=[{"role": "user", "content": problem.prompt}],
        chosen=problem.answer,
        rejected=rejected,
        metadata=metadata,
    )


def corpus_texts(examples: Iterable[PreferenceExample]) -> list[str]:
    """Every prompt message, chosen and rejected text: for tokenizer training and pretraining."""
    texts = []
    for example in examples:
        texts.extend(message["content"] for message in example.prompt)
        texts.extend((example.chosen, example.rejected))
    return texts


def write_suite(
    out_dir: str | Path,
    n_train: int,
    n_eval: int,
    n_test: int,
    seed: int = 0,
    families: list[str] | None = None,
) -> dict[str, Path]:
    """Generate a suite and write `<out_dir>/{train,eval,test}.jsonl`; returns split -> path."""
    suite = generate_suite(n_train, n_eval, n_test, seed=seed, families=families)
    out_dir = Path(out_dir)
    return {
        split: write_jsonl(examples, out_dir / f"{split}.jsonl")
        for split, examples in suite.items()
    }
