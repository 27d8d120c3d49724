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
(`oracle_reward`) gives 1.0 to an exactly right answer and at most `PARTIAL_CREDIT_CAP` to
anything else, so a near miss always scores strictly below the right answer. It is the ground
truth the judges (reward models, win rates) are checked against.
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
"""Best reward for a response that is not exactly right: keeps every near miss below 1.0."""

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
    similarity: Callable[[list[str], list[str]], float]
    """Partial credit in [0, 1] of response tokens against answer tokens (not exact)."""
    canonical: Callable[[list[str]], list[str]] = lambda tokens: tokens
    """Rewrites response tokens before grading (e.g. "85" -> ["8", "5"] for add)."""


# --- response parsing and partial credit -------------------------------------------------------

_NOT_WORD = re.compile(r"[^a-z0-9]+")


def response_tokens(response: object) -> list[str]:
    """Lower-cased words and numbers of a model response; punctuation and non-ASCII dropped.

    Anything that is not a string (None from a failed generation) gives no tokens.
    """
    if not isinstance(response, str):
        return []
    return _NOT_WORD.sub(" ", response.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)), rolling row)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def list_similarity(tokens: list[str], expected: list[str]) -> float:
    """LCS / longer length: one swap or one dropped item loses one item's worth of credit."""
    # Only a prefix can matter for the LCS; the full length still counts in the denominator, so
    # long junk scores near 0 and costs no more than a short response to grade.
    considered = tokens[: 2 * len(expected) + 8]
    return _lcs_length(considered, expected) / max(len(tokens), len(expected))


def place_value_similarity(tokens: list[str], expected: list[str]) -> float:
    """Fraction of digit positions right, aligned from the units digit as in written sums."""
    # strict=False on purpose: a longer or shorter response is graded on the columns it has.
    columns = zip(reversed(tokens), reversed(expected), strict=False)
    matches = sum(got == want for got, want in columns)
    return matches / max(len(tokens), len(expected))


def closeness_similarity(tokens: list[str], expected: list[str]) -> float:
    """For a one-digit answer: how close the first number is (0 at distance 9), per token."""
    first = next((token for token in tokens if token.isdigit()), None)
    if first is None:
        return 0.0
    # len() guard: int() of a huge digit string is slow and, past 4300 digits, an error.
    distance = abs(int(first) - int(expected[0])) if len(first) <= 3 else 999
    return max(0.0, 1.0 - distance / 9) / len(tokens)


def _digits_of_number(tokens: list[str]) -> list[str]:
    # "85" and "8 5" are the same number: grade digits, not tokenisation.
    if tokens and all(token.isdigit() for token in tokens):
        return list("".join(tokens))
    return tokens


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
    ),
    "max": TaskFamily(
        name="max",
        description="largest of 3-6 digits (not all equal)",
        capacity=sum(10**n - 10 for n in range(3, 7)),
        make_problem=_make_max,
        near_misses=_max_near_misses,
        similarity=closeness_similarity,
    ),
}


# --- the oracle --------------------------------------------------------------------------------


def oracle_reward(metadata: dict, response: str) -> float:
    """Graded reward in [0, 1] of a model `response` to the example with this `metadata`.

    1.0 when the response's tokens (lower-cased, punctuation ignored) are exactly the answer;
    otherwise `PARTIAL_CREDIT_CAP` times the family's similarity (e.g. 0.9 * 3/4 for a sorted
    list with one item dropped); 0.0 for empty or non-string responses. Never raises on the
    response; raises ValueError for metadata without a known family or an answer.
    """
    family = _family_of(metadata)
    if "answer" not in metadata:
        raise ValueError(f"metadata has no 'answer': {metadata!r}")
    expected = str(metadata["answer"]).split()
    tokens = family.canonical(response_tokens(response))
    if not tokens:
        return 0.0
    if tokens == expected:
        return 1.0
    similarity = min(1.0, max(0.0, family.similarity(tokens, expected)))
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
