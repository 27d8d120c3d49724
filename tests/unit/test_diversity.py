"""Lexical diversity: D(O), PID, AID and distinct-n on hand-made inputs, with both embedders."""

import numpy as np
import pytest

from orpo.diversity import (
    Embedder,
    HashingEmbedder,
    across_input_diversity,
    distinct_n,
    lexical_diversity,
    load_embedder,
    mean_pairwise_cosine,
    per_input_diversity,
)

pytestmark = pytest.mark.unit

SAME = "the cat sat on the mat"
OTHER = "quantum chromodynamics lattice"
THIRD = "stock markets fell sharply on tuesday"


class CountingEmbedder:
    """Wraps an embedder and records every `encode` call, to check batching."""

    def __init__(self, inner: Embedder):
        self.inner = inner
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return self.inner.encode(texts)


# --- D(O) -------------------------------------------------------------------------------------


def test_mean_pairwise_cosine_worked_example():
    # Pairs: (0,1) cos 1, (0,2) cos 0, (1,2) cos 0 -> mean 1/3.
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert mean_pairwise_cosine(embeddings) == pytest.approx(1 / 3)


def test_mean_pairwise_cosine_ignores_row_scale():
    # Cosine, not dot product: [3, 4] and [0.6, 0.8] point the same way; [4, -3] is orthogonal.
    # Pairs: 1, 0, 0 -> 1/3.
    embeddings = np.array([[3.0, 4.0], [0.6, 0.8], [4.0, -3.0]])
    assert mean_pairwise_cosine(embeddings) == pytest.approx(1 / 3)


def test_mean_pairwise_cosine_matches_explicit_pairs():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(7, 5))
    units = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    explicit = np.mean([units[i] @ units[j] for i in range(7) for j in range(i + 1, 7)])
    assert mean_pairwise_cosine(embeddings) == pytest.approx(explicit)


def test_mean_pairwise_cosine_identical_is_one():
    assert mean_pairwise_cosine(np.tile([0.3, -0.2, 0.9], (5, 1))) == pytest.approx(1.0)


@pytest.mark.parametrize("n_rows", [0, 1])
def test_mean_pairwise_cosine_needs_two(n_rows):
    with pytest.raises(ValueError, match="at least 2"):
        mean_pairwise_cosine(np.ones((n_rows, 3)))


def test_mean_pairwise_cosine_rejects_zero_rows():
    with pytest.raises(ValueError, match="zero embedding"):
        mean_pairwise_cosine(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_per_input_and_across_input_diversity():
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    # Prompt 0: identical samples (D = 1); prompt 1: orthogonal samples (D = 0). PID = 0.5.
    by_prompt = [np.stack([e1, e1]), np.stack([e1, e2])]
    assert per_input_diversity(by_prompt) == pytest.approx(0.5)
    # First samples are e1 and e1 -> AID = 1.
    assert across_input_diversity(np.stack([b[0] for b in by_prompt])) == pytest.approx(1.0)


def test_per_input_diversity_needs_two_samples_per_prompt():
    with pytest.raises(ValueError, match="prompt 1"):
        per_input_diversity([np.ones((2, 3)), np.ones((1, 3))])


# --- distinct-n -------------------------------------------------------------------------------


def test_distinct_n_exact():
    texts = ["a b a b", "a c"]
    # Unigrams: a b a b a c -> 3 unique / 6.
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # Bigrams (never across texts): (a b) (b a) (a b) | (a c) -> 3 unique / 4.
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)


def test_distinct_n_no_ngrams_is_zero():
    assert distinct_n([], 1) == 0.0
    assert distinct_n(["one", ""], 2) == 0.0


def test_distinct_n_rejects_bad_n():
    with pytest.raises(ValueError):
        distinct_n(["a b"], 0)


# --- embedders and the whole metric -------------------------------------------------------------


def test_hashing_embedder_is_deterministic_and_normalised():
    embedder = load_embedder("hashing")
    assert isinstance(embedder, HashingEmbedder)
    assert isinstance(embedder, Embedder)
    first = embedder.encode([SAME, OTHER, ""])
    again = HashingEmbedder().encode([SAME, OTHER, ""])
    assert first.shape == (3, 256) and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)


def _check_identical_vs_different(embedder: Embedder) -> None:
    identical = {"p0": [SAME] * 3, "p1": [SAME] * 3}
    different = {"p0": [SAME, OTHER, THIRD], "p1": [OTHER, SAME, THIRD]}
    same_scores = lexical_diversity(identical, embedder)
    diff_scores = lexical_diversity(different, embedder)
    assert same_scores["pid"] == pytest.approx(1.0, abs=1e-5)
    assert same_scores["aid"] == pytest.approx(1.0, abs=1e-5)
    assert diff_scores["pid"] < 0.5
    assert diff_scores["aid"] < 0.5


def test_lexical_diversity_with_hashing_embedder():
    _check_identical_vs_different(HashingEmbedder())


def test_lexical_diversity_batches_and_counts_distinct():
    embedder = CountingEmbedder(HashingEmbedder())
    samples = {"p0": ["a b", "a b c"], "p1": ["c d", "d"]}
    scores = lexical_diversity(samples, embedder)
    # One encode call, texts flattened prompt by prompt.
    assert embedder.calls == [["a b", "a b c", "c d", "d"]]
    # Unigrams a b a b c c d d -> 4 unique / 8; bigrams (a b) (a b) (b c) (c d) -> 3 / 4.
    assert scores["distinct_1"] == pytest.approx(4 / 8)
    assert scores["distinct_2"] == pytest.approx(3 / 4)
    assert set(scores) == {"pid", "aid", "distinct_1", "distinct_2"}


def test_lexical_diversity_slices_first_samples():
    # Orthogonal one-hot "embedder": text "i" -> e_i. First samples are e0 and e0 -> AID = 1;
    # prompt p0 = {e0, e1}, p1 = {e0, e0, e2} -> D = 0 and 1/3 -> PID = 1/6.
    class OneHot:
        def encode(self, texts):
            return np.eye(3)[[int(t) for t in texts]]

    scores = lexical_diversity({"p0": ["0", "1"], "p1": ["0", "0", "2"]}, OneHot())
    assert scores["aid"] == pytest.approx(1.0)
    assert scores["pid"] == pytest.approx(1 / 6)


def test_lexical_diversity_rejects_too_few():
    with pytest.raises(ValueError, match="at least 2 prompts"):
        lexical_diversity({"p0": ["a", "b"]}, HashingEmbedder())
    with pytest.raises(ValueError, match="'p1' has 1"):
        lexical_diversity({"p0": ["a", "b"], "p1": ["c"]}, HashingEmbedder())


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    # The packaged copy of all-MiniLM-L6-v2; conftest sets HF_HUB_OFFLINE=1 so no hub access.
    return load_embedder()


@pytest.mark.integration  # importing torch + sentence-transformers takes ~6-9 s on 2 cores
def test_real_minilm_embedder_offline(minilm):
    embeddings = minilm.encode([SAME, SAME, OTHER])
    assert embeddings.shape == (3, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    assert mean_pairwise_cosine(embeddings[:2]) == pytest.approx(1.0, abs=1e-5)
    # Unrelated topics: far below identical (observed ~0.07).
    assert mean_pairwise_cosine(embeddings[[0, 2]]) < 0.3
    _check_identical_vs_different(minilm)


@pytest.mark.integration
def test_missing_embedder_path_fails_loudly(minilm):
    # Never a silent fallback to the hashing embedder. (Depends on `minilm` only so that the
    # sentence-transformers import cost is paid once.)
    with pytest.raises(OSError):
        load_embedder("/nonexistent/embedder-dir")
