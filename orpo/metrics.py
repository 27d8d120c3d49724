"""Win rates between two policies, judged by a reward function, with bootstrap intervals.

The paper's convention (Hong et al. 2024, Tables 2-3): for every test prompt, each policy
samples one response per *round* at temperature 1.0; a judge (a Bradley-Terry reward model)
scores both, and "A vs B" counts a win as 1 and a tie as 0.5. The win rate is the mean over
prompts; the paper reports it as mean (sd) over 3 rounds, one round per sample index.

Rewards are laid out as arrays of shape (P, K): P prompts, K rounds (sample index k of every
prompt belongs to round k). A row holds every round for one prompt.

Why a bootstrap interval as well: the sd over rounds only measures sampling noise of the
generations on one fixed prompt set, and with 3 rounds it is itself very noisy. The larger
uncertainty usually comes from *which* prompts the test set happens to hold. We resample
prompts (whole rows, so a prompt's correlated rounds stay together) with replacement and take
the percentile interval of the mean outcome. With several training seeds the resampling is
stratified: prompts are resampled within each seed, so every replicate keeps all seeds.

Pure numpy; no torch, no logging.
"""

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

# Bootstrap index matrices are drawn in blocks of at most this many entries, so that large
# prompt sets do not allocate an (n_bootstrap, P) matrix in one go.
_MAX_BOOTSTRAP_BLOCK_ENTRIES = 4_000_000


@dataclass(frozen=True)
class WinRate:
    """A's win rate against B, with its spread over rounds and a bootstrap interval."""

    win_rate: float
    """Mean outcome over all prompts and rounds (win 1, tie 0.5, loss 0), in [0, 1]."""
    sd_rounds: float
    """Sample sd (ddof=1) of the per-round win rates, the paper's "(sd)"; 0.0 for one round."""
    per_round: tuple[float, ...]
    """Win rate of each round (sample index), over all prompts (and seeds, when pooled)."""
    ci_low: float
    """Lower end of the percentile bootstrap interval over prompts."""
    ci_high: float
    """Upper end of the percentile bootstrap interval over prompts."""
    n_prompts: int
    """Prompts compared; when pooled, (seed, prompt) units summed over seeds."""
    n_rounds: int
    """Rounds (samples per prompt), K."""
    n_seeds: int = 1
    """Training seeds pooled into this estimate."""

    def as_dict(self) -> dict[str, float | int | list[float]]:
        """Plain dict (per_round as a list) for tables and JSON."""
        fields = asdict(self)
        fields["per_round"] = list(self.per_round)
        return fields


def pairwise_outcomes(
    rewards_a: ArrayLike, rewards_b: ArrayLike, *, tie_tol: float = 0.0
) -> np.ndarray:
    """Per (prompt, round) outcome of A against B: 1.0 win, 0.5 tie, 0.0 loss.

    Args:
        rewards_a: judge rewards of A's samples, shape (P, K); a 1-D array is one round.
        rewards_b: judge rewards of B's samples for the same prompts and rounds, same shape.
        tie_tol: rewards with |a - b| <= tie_tol count as a tie (exact equality always does).

    Returns:
        float64 array (P, K).

    Example: a = [[2.0], [1.0], [0.5]], b = [[1.0], [1.0], [0.7]] -> [[1.0], [0.5], [0.0]].
    """
    if tie_tol < 0:
        raise ValueError(f"tie_tol must be >= 0, got {tie_tol}")
    a = _as_reward_matrix(rewards_a, "rewards_a")
    b = _as_reward_matrix(rewards_b, "rewards_b")
    if a.shape != b.shape:
        raise ValueError(
            f"rewards_a and rewards_b must have the same shape (prompts, rounds); "
            f"got {a.shape} and {b.shape}"
        )
    # Equality is checked on its own so that equal infinities (inf - inf = nan) are ties.
    with np.errstate(invalid="ignore"):
        tie = (a == b) | (np.abs(a - b) <= tie_tol)
    return np.where(tie, 0.5, np.where(a > b, 1.0, 0.0))  # (P, K)


def win_rate(
    rewards_a: ArrayLike,
    rewards_b: ArrayLike,
    *,
    tie_tol: float = 0.0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A against B on the same prompts, judged by the rewards given.

    Args:
        rewards_a, rewards_b: rewards of shape (P, K), P prompts and K rounds.
        tie_tol: see `pairwise_outcomes`.
        n_bootstrap: bootstrap replicates; each resamples the P prompts with replacement.
        confidence: coverage of the percentile interval (0.95 -> 2.5th and 97.5th percentiles).
        seed: seed of the bootstrap's random generator; same inputs and seed, same interval.

    Example (5 prompts, 1 round): 3 wins, 1 tie, 1 loss -> (3 * 1 + 0.5 + 0) / 5 = 0.7.
    """
    return pooled_win_rate(
        [(rewards_a, rewards_b)],
        tie_tol=tie_tol,
        n_bootstrap=n_bootstrap,
        confidence=confidence,
        seed=seed,
    )


def pooled_win_rate(
    pairs: Sequence[tuple[ArrayLike, ArrayLike]],
    *,
    tie_tol: float = 0.0,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WinRate:
    """Win rate of A against B pooled over training seeds.

    Args:
        pairs: one (rewards_a, rewards_b) per seed, each of shape (P_s, K); every seed must
            have the same number of rounds K (prompt counts may differ).
        tie_tol, n_bootstrap, confidence, seed: as in `win_rate`.

    The point estimate is the mean over every (seed, prompt, round) outcome, i.e. the win rate
    of the seeds' rows stacked together. per_round[k] is the mean of round k over every
    (seed, prompt); when all seeds share the same prompt set this is the average of the
    seeds' per-round win rates. The bootstrap is stratified by seed: each replicate resamples
    P_s prompts with replacement within every seed s, then takes the pooled mean.
    """
    if not pairs:
        raise ValueError("pooled_win_rate needs at least one (rewards_a, rewards_b) pair")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    outcomes_by_seed = [pairwise_outcomes(a, b, tie_tol=tie_tol) for a, b in pairs]
    rounds = {outcomes.shape[1] for outcomes in outcomes_by_seed}
    if len(rounds) != 1:
        shapes = [outcomes.shape for outcomes in outcomes_by_seed]
        raise ValueError(f"every seed must have the same number of rounds; got shapes {shapes}")

    stacked = np.concatenate(outcomes_by_seed, axis=0)  # (sum P_s, K)
    n_units, n_rounds = stacked.shape
    per_round = stacked.mean(axis=0)  # (K,)
    sd_rounds = float(per_round.std(ddof=1)) if n_rounds > 1 else 0.0

    # A prompt's rounds share the prompt, so they are resampled together: the bootstrap only
    # needs each prompt's mean outcome over rounds.
    prompt_means_by_seed = [outcomes.mean(axis=1) for outcomes in outcomes_by_seed]
    rng = np.random.default_rng(seed)
    replicate_sums = np.zeros(n_bootstrap)  # (B,)
    for prompt_means in prompt_means_by_seed:
        replicate_sums += _bootstrap_sums(prompt_means, n_bootstrap, rng)
    replicates = replicate_sums / n_units  # (B,)
    alpha = 1.0 - confidence
    ci_low, ci_high = np.quantile(replicates, [alpha / 2, 1.0 - alpha / 2])

    return WinRate(
        win_rate=float(stacked.mean()),
        sd_rounds=sd_rounds,
        per_round=tuple(float(x) for x in per_round),
        ci_low=float(ci_low),
        ci_high=float(ci_high),
        n_prompts=n_units,
        n_rounds=n_rounds,
        n_seeds=len(outcomes_by_seed),
    )


def _bootstrap_sums(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Sum of `len(values)` draws with replacement from `values`, for each replicate: (B,)."""
    n = values.shape[0]
    block = max(1, _MAX_BOOTSTRAP_BLOCK_ENTRIES // n)
    sums = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        indices = rng.integers(0, n, size=(stop - start, n))  # (b, P)
        sums[start:stop] = values[indices].sum(axis=1)
    return sums


def _as_reward_matrix(rewards: ArrayLike, name: str) -> np.ndarray:
    """Rewards as a float64 (P, K) array; 1-D input is read as one round."""
    matrix = np.asarray(rewards, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2:
        raise ValueError(f"{name} must have shape (prompts, rounds); got shape {matrix.shape}")
    if matrix.size == 0:
        raise ValueError(f"{name} is empty (shape {matrix.shape})")
    if np.isnan(matrix).any():
        bad = np.argwhere(np.isnan(matrix))[0].tolist()
        raise ValueError(f"{name} contains NaN rewards (first at [prompt, round] = {bad})")
    return matrix
