"""Win rates on constructed rewards: exact point estimates, bootstrap behaviour, errors; the
pooled interval's calibration on simulated A/A comparisons; Holm and the detectable effect."""

import math
from statistics import NormalDist

import numpy as np
import pytest

from orpo.metrics import (
    WinRate,
    detectable_effect,
    holm_adjust,
    pairwise_outcomes,
    pooled_win_rate,
    win_rate,
)

pytestmark = pytest.mark.unit


def test_pairwise_outcomes_win_tie_loss():
    a = np.array([[2.0], [1.0], [0.5]])
    b = np.array([[1.0], [1.0], [0.7]])
    np.testing.assert_array_equal(pairwise_outcomes(a, b), [[1.0], [0.5], [0.0]])


def test_pairwise_outcomes_tie_tolerance():
    a = np.array([[1.00], [1.05], [1.20]])
    b = np.array([[1.01], [1.00], [1.00]])
    # |diff| = 0.01, 0.05, 0.20: the first two fall within 0.1 and become ties.
    np.testing.assert_array_equal(pairwise_outcomes(a, b, tie_tol=0.1), [[0.5], [0.5], [1.0]])
    np.testing.assert_array_equal(pairwise_outcomes(a, b), [[0.0], [1.0], [1.0]])


def test_pairwise_outcomes_equal_infinities_tie():
    assert pairwise_outcomes([[math.inf]], [[math.inf]])[0, 0] == 0.5


@pytest.mark.parametrize(
    ("rewards_a", "expected"),
    [(np.full((4, 3), 2.0), 1.0), (np.ones((4, 3)), 0.5), (np.zeros((4, 3)), 0.0)],
    ids=["all-wins", "all-ties", "all-losses"],
)
def test_win_rate_constant_outcomes(rewards_a, expected):
    result = win_rate(rewards_a, np.ones((4, 3)))
    assert result.win_rate == expected
    assert result.per_round == (expected, expected, expected)
    assert result.sd_rounds == 0.0
    # Every bootstrap replicate is the same constant.
    assert result.ci_low == expected and result.ci_high == expected
    assert (result.n_prompts, result.n_rounds, result.n_seeds) == (4, 3, 1)


def test_win_rate_known_mix_one_round():
    # 5 prompts, 1 round: win, win, win, tie, loss -> (1 + 1 + 1 + 0.5 + 0) / 5 = 0.7.
    a = [3.0, 2.0, 5.0, 1.0, 0.0]
    b = [1.0, 1.0, 1.0, 1.0, 1.0]
    result = win_rate(np.array(a)[:, None], np.array(b)[:, None])
    assert result.win_rate == pytest.approx(0.7)
    assert result.per_round == pytest.approx((0.7,))
    assert result.sd_rounds == 0.0
    assert (result.n_prompts, result.n_rounds) == (5, 1)


def test_win_rate_per_round_and_sd():
    # 4 prompts x 3 rounds; outcomes (rows = prompts, columns = rounds):
    #   round 0: 1, 1, 1, 0     -> 0.75
    #   round 1: 1, 0.5, 0, 0   -> 0.375
    #   round 2: 1, 1, 0.5, 0.5 -> 0.75
    # mean = (0.75 + 0.375 + 0.75) / 3 = 0.625
    # sample sd: deviations 0.125, -0.25, 0.125; squares sum to 0.09375; / 2 = 0.046875;
    # sqrt = 0.21650635...
    b = np.zeros((4, 3))
    a = np.array(
        [
            [1.0, 1.0, 1.0],
            [1.0, 0.0, 1.0],
            [1.0, -1.0, 0.0],
            [-1.0, -1.0, 0.0],
        ]
    )
    result = win_rate(a, b)
    assert result.per_round == pytest.approx((0.75, 0.375, 0.75))
    assert result.win_rate == pytest.approx(0.625)
    assert result.sd_rounds == pytest.approx(math.sqrt(0.046875))


def test_ci_contains_point_estimate():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3))
    result = win_rate(a, b, n_bootstrap=500)
    assert result.ci_low <= result.win_rate <= result.ci_high
    assert result.ci_low < result.ci_high


def test_ci_shrinks_with_more_prompts():
    # Same win probability (A's reward is shifted up by 0.5), 20 vs 2000 prompts: the
    # interval width scales like 1/sqrt(P), so it should shrink roughly tenfold.
    def width(n_prompts: int) -> float:
        rng = np.random.default_rng(7)
        a = rng.normal(loc=0.5, size=(n_prompts, 3))
        b = rng.normal(size=(n_prompts, 3))
        result = win_rate(a, b, n_bootstrap=500)
        return result.ci_high - result.ci_low

    small, large = width(20), width(2000)
    assert large < small / 4


def test_bootstrap_is_deterministic_by_seed():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    first = win_rate(a, b, seed=11)
    assert win_rate(a, b, seed=11) == first
    other = win_rate(a, b, seed=12)
    assert other.win_rate == first.win_rate
    assert (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)


def test_bootstrap_in_blocks_is_valid(monkeypatch):
    # Force the block-wise index drawing used for large prompt sets (3 replicates per block).
    monkeypatch.setattr("orpo.metrics._MAX_BOOTSTRAP_BLOCK_ENTRIES", 100)
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    blocked = win_rate(a, b, n_bootstrap=200)
    assert blocked == win_rate(a, b, n_bootstrap=200)
    assert blocked.ci_low <= blocked.win_rate <= blocked.ci_high
    assert blocked.ci_high - blocked.ci_low > 0.05


def test_confidence_level_widens_interval():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    narrow = win_rate(a, b, confidence=0.5)
    wide = win_rate(a, b, confidence=0.99)
    assert wide.ci_low <= narrow.ci_low and narrow.ci_high <= wide.ci_high


def test_pooled_equals_concatenation_point_estimate():
    rng = np.random.default_rng(5)
    pairs = [(rng.normal(size=(p, 3)), rng.normal(size=(p, 3))) for p in (10, 10, 25)]
    pooled = pooled_win_rate(pairs)
    stacked = win_rate(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]))
    assert pooled.win_rate == pytest.approx(stacked.win_rate)
    assert pooled.per_round == pytest.approx(stacked.per_round)
    assert (pooled.n_prompts, pooled.n_rounds, pooled.n_seeds) == (45, 3, 3)
    assert pooled.ci_low <= pooled.win_rate <= pooled.ci_high


def test_pooled_per_round_is_average_over_seeds_with_same_prompts():
    # Seed 0 wins every round-0 comparison and loses round 1; seed 1 ties everything.
    seed0 = (np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 1.0]]))
    seed1 = (np.ones((2, 2)), np.ones((2, 2)))
    pooled = pooled_win_rate([seed0, seed1])
    # Round 0: (1.0 + 0.5) / 2 = 0.75; round 1: (0.0 + 0.5) / 2 = 0.25.
    assert pooled.per_round == pytest.approx((0.75, 0.25))
    assert pooled.win_rate == pytest.approx(0.5)


def test_pooled_single_seed_matches_win_rate():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(15, 3)), rng.normal(size=(15, 3))
    assert pooled_win_rate([(a, b)], seed=2) == win_rate(a, b, seed=2)


def test_pooled_rejects_different_round_counts():
    with pytest.raises(ValueError, match="same number of rounds"):
        pooled_win_rate([(np.ones((3, 2)), np.ones((3, 2))), (np.ones((3, 3)), np.ones((3, 3)))])


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(3, 3\)"):
        win_rate(np.ones((3, 2)), np.ones((3, 3)))


def test_nan_rewards_rejected():
    a = np.ones((3, 2))
    a[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pairwise_outcomes(a, np.ones((3, 2)))


@pytest.mark.parametrize(
    "kwargs",
    [{"n_bootstrap": 0}, {"confidence": 1.0}, {"confidence": 0.0}, {"tie_tol": -0.1}],
)
def test_invalid_arguments_rejected(kwargs):
    with pytest.raises(ValueError):
        win_rate(np.ones((3, 2)), np.ones((3, 2)), **kwargs)


def test_as_dict_is_plain():
    result = win_rate(np.full((2, 2), 2.0), np.ones((2, 2)), n_bootstrap=10)
    assert isinstance(result, WinRate)
    fields = result.as_dict()
    assert fields == {
        "win_rate": 1.0,
        "sd_rounds": 0.0,
        "per_round": [1.0, 1.0],
        "ci_low": 1.0,
        "ci_high": 1.0,
        "se": 0.0,
        "p_value": fields["p_value"],
        "df": math.inf,
        "n_prompts": 2,
        "n_rounds": 2,
        "n_seeds": 1,
    }
    # All wins and no spread: as strong as evidence gets, yet a p-value stays above zero.
    assert 0.0 < fields["p_value"] < 1e-100
    pooled = pooled_win_rate([(np.full((3, 2), 2.0), np.ones((3, 2)))] * 2).as_dict()
    assert all(type(pooled[name]) is float for name in ("se", "p_value", "df", "ci_low"))


# --- The pooled interval: known values ---------------------------------------------------


def _wins_of_ten(wins: int) -> tuple[np.ndarray, np.ndarray]:
    """One prompt, 10 rounds: A wins `wins` of them and loses the rest; shape (1, 10)."""
    return np.array([[1.0] * wins + [0.0] * (10 - wins)]), np.full((1, 10), 0.5)


def test_one_prompt_three_seeds_is_a_t_interval_on_the_seed_means():
    # Seed win rates 0.5, 0.6, 0.7: mean 0.6, var 0.01, se = sqrt(0.01 / 3) = 0.057735 on 2 df.
    # t_{0.975, 2} = 4.302653 -> 0.6 +- 0.248414. Two-sided p of t = 0.1 / se = sqrt(3) on
    # 2 df has a closed form, 1 - t / sqrt(2 + t^2) = 1 - sqrt(3 / 5) = 0.225403.
    result = pooled_win_rate([_wins_of_ten(5), _wins_of_ten(6), _wins_of_ten(7)])
    assert result.win_rate == pytest.approx(0.6)
    assert result.se == pytest.approx(math.sqrt(0.01 / 3))
    assert result.df == pytest.approx(2.0)
    assert result.ci_low == pytest.approx(0.6 - 0.248414, abs=1e-6)
    assert result.ci_high == pytest.approx(0.6 + 0.248414, abs=1e-6)
    assert result.p_value == pytest.approx(1 - math.sqrt(3 / 5), rel=1e-9)


def test_two_prompts_cannot_say_which_prompts_favour_a():
    # The docstring's example: both seeds win prompt 0 and tie prompt 1 -> only the prompt
    # piece, MS_prompt / (S P) = 0.25 / 4, se 0.25 on 1 df; t = 1 on 1 df -> p = 0.5.
    seed = (np.array([[1.0], [0.5]]), np.array([[0.0], [0.5]]))
    result = pooled_win_rate([seed, seed])
    assert result.win_rate == 0.75
    assert (result.se, result.df) == (pytest.approx(0.25), pytest.approx(1.0))
    assert (result.ci_low, result.ci_high) == (0.0, 1.0)
    assert result.p_value == pytest.approx(0.5)


def test_copies_of_one_seed_add_no_information():
    # The old stratified bootstrap treated each copy as new prompts and shrank se by sqrt(3).
    rng = np.random.default_rng(20)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    pooled = pooled_win_rate([(a, b)] * 3)
    prompt_means = pairwise_outcomes(a, b).mean(axis=1)
    assert pooled.se == pytest.approx(prompt_means.std(ddof=1) / math.sqrt(40))
    assert pooled.df == pytest.approx(39.0)
    single = win_rate(a, b, n_bootstrap=2000)
    assert pooled.se == pytest.approx(single.se, rel=0.15)


def test_seed_disagreement_widens_the_interval_towards_seed_df():
    # Same prompts, some of which suit A in every seed (shared); then the seeds' rewards for A
    # are shifted apart, so the seeds disagree as well.
    rng = np.random.default_rng(21)
    b, shared = rng.normal(size=(64, 5)), rng.normal(size=(64, 1))
    noise = [rng.normal(size=(64, 5)) for _ in range(3)]
    agree = pooled_win_rate([(b + shared + n, b) for n in noise])
    disagree = pooled_win_rate(
        [(b + shared + shift + n, b) for shift, n in zip((-1, 0, 1), noise, strict=True)]
    )
    assert disagree.se > 2 * agree.se
    assert disagree.df < 3 < agree.df
    assert disagree.ci_high - disagree.ci_low > 2 * (agree.ci_high - agree.ci_low)


def test_pooled_interval_ignores_seed_and_seed_order():
    rng = np.random.default_rng(22)
    pairs = [(rng.normal(size=(30, 3)), rng.normal(size=(30, 3))) for _ in range(3)]
    first = pooled_win_rate(pairs, seed=1)
    assert pooled_win_rate(pairs, seed=2) == first
    swapped = pooled_win_rate(pairs[::-1])
    assert swapped.win_rate == pytest.approx(first.win_rate)
    assert (swapped.se, swapped.df) == (pytest.approx(first.se), pytest.approx(first.df))
    # Reordering prompts (the same way in every seed) changes nothing either.
    order = rng.permutation(30)
    shuffled = pooled_win_rate([(a[order], b[order]) for a, b in pairs])
    assert shuffled.se == pytest.approx(first.se)
    assert shuffled.p_value == pytest.approx(first.p_value)


def test_swapping_a_and_b_mirrors_the_verdict():
    rng = np.random.default_rng(23)
    pairs = [(rng.normal(0.3, size=(25, 3)), rng.normal(size=(25, 3))) for _ in range(3)]
    forward = pooled_win_rate(pairs)
    backward = pooled_win_rate([(b, a) for a, b in pairs])
    assert backward.win_rate == pytest.approx(1 - forward.win_rate)
    assert backward.ci_low == pytest.approx(1 - forward.ci_high)
    assert backward.p_value == pytest.approx(forward.p_value)


# --- p-values --------------------------------------------------------------------------


def test_p_value_is_one_for_exact_ties_without_spread():
    assert win_rate(np.ones((4, 3)), np.ones((4, 3))).p_value == 1.0
    pooled = pooled_win_rate([(np.ones((4, 3)), np.ones((4, 3)))] * 3)
    assert (pooled.se, pooled.p_value, pooled.ci_low, pooled.ci_high) == (0.0, 1.0, 0.5, 0.5)


def test_p_value_is_tiny_far_from_one_half_and_moderate_near_it():
    rng = np.random.default_rng(24)
    strong = [(rng.normal(1.5, size=(64, 5)), rng.normal(size=(64, 5))) for _ in range(3)]
    result = pooled_win_rate(strong)
    assert result.ci_low > 0.75 and 0.0 < result.p_value < 1e-6
    single = win_rate(*strong[0])
    assert single.ci_low > 0.75 and 0.0 < single.p_value < 1e-6
    null = [(rng.normal(size=(64, 5)), rng.normal(size=(64, 5))) for _ in range(3)]
    assert 0.05 < pooled_win_rate(null).p_value <= 1.0


def test_p_value_agrees_with_the_interval_for_several_seeds():
    # Same t and df behind both: the 95% interval excludes 0.5 exactly when p < 0.05.
    rewards_a, rewards_b = _simulated_rewards(np.random.default_rng(25), 200, 0.56, 0.2)
    for a, b in zip(rewards_a, rewards_b, strict=True):
        result = pooled_win_rate(list(zip(a, b, strict=True)))
        assert 0.0 < result.p_value <= 1.0
        excludes = result.ci_low > 0.5 or result.ci_high < 0.5
        assert excludes == (result.p_value < 0.05)


# --- Calibration on simulated comparisons ----------------------------------------------

N_REPLICATES = 300
SEED_EFFECT_SD = 0.2  # latent units; a seed's win rate then varies by about +-5 points


def _simulated_rewards(
    rng: np.random.Generator,
    n_replicates: int,
    true_win_rate: float,
    seed_sd: float,
    *,
    n_seeds: int = 3,
    n_prompts: int = 64,
    n_rounds: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of A and B, each (R, S, P, K), for R simulated experiments.

    reward_a - reward_b = mu + d_p + e_s + g_sp + noise_spk, with d_p ~ N(0, 1) the prompt's
    latent difference shared by every seed (some prompts suit A), e_s ~ N(0, seed_sd) the
    training seed's, g_sp ~ N(0, 0.5) the seed x prompt interaction and noise ~ N(0, 1) the
    round's sampling noise; B's reward itself varies by prompt and round. The difference is
    symmetric about mu, so A wins with probability Phi(mu / sd_total) = true_win_rate.
    """
    sds = {"prompt": 1.0, "seed": seed_sd, "interaction": 0.5, "round": 1.0}
    mu = NormalDist().inv_cdf(true_win_rate) * math.sqrt(sum(s * s for s in sds.values()))
    shape = (n_replicates, n_seeds, n_prompts, n_rounds)
    r, s, p, _ = shape

    def draw(sd: float, size: tuple[int, ...]) -> np.ndarray:
        return rng.normal(0.0, sd, size=size)

    difference = (
        mu
        + draw(sds["prompt"], (r, 1, p, 1))
        + draw(sds["seed"], (r, s, 1, 1))
        + draw(sds["interaction"], (r, s, p, 1))
        + draw(sds["round"], shape)
    )
    rewards_b = draw(1.0, (r, 1, p, 1)) + draw(0.3, shape)
    return rewards_b + difference, rewards_b


def _verdict_rates(rewards_a: np.ndarray, rewards_b: np.ndarray) -> tuple[float, float]:
    """(share of intervals excluding 0.5, share lying wholly above it) over the replicates."""
    excludes = above = 0
    for a, b in zip(rewards_a, rewards_b, strict=True):
        result = pooled_win_rate(list(zip(a, b, strict=True)))
        excludes += result.ci_low > 0.5 or result.ci_high < 0.5
        above += result.ci_low > 0.5
    return excludes / len(rewards_a), above / len(rewards_a)


@pytest.mark.parametrize("seed_sd", [0.0, SEED_EFFECT_SD], ids=["shared-prompts", "and-seeds"])
def test_aa_comparisons_rarely_give_a_verdict(seed_sd):
    # Measured with 10,000 replicates: 3.9% (no seed effects) and 4.2% (seed sd 0.2); the
    # stratified bootstrap this replaces: 19% and 32%.
    rewards = _simulated_rewards(np.random.default_rng(30), N_REPLICATES, 0.5, seed_sd)
    false_verdicts, _ = _verdict_rates(*rewards)
    assert false_verdicts <= 0.07


def test_aa_comparisons_with_unaligned_prompts_stay_honest():
    # Seeds judged on 64, 60 and 56 of the same prompts: rows cannot be matched, and the
    # conservative fallback is used (measured: 2% false verdicts with seed sd 0.2).
    rewards_a, rewards_b = _simulated_rewards(
        np.random.default_rng(31), N_REPLICATES, 0.5, SEED_EFFECT_SD
    )
    false_verdicts = 0
    for a, b in zip(rewards_a, rewards_b, strict=True):
        pairs = [(a[s, : 64 - 4 * s], b[s, : 64 - 4 * s]) for s in range(3)]
        result = pooled_win_rate(pairs)
        false_verdicts += result.ci_low > 0.5 or result.ci_high < 0.5
    assert false_verdicts / N_REPLICATES <= 0.07


def test_a_real_advantage_is_detected():
    # True win rate 0.62, no seed effects: measured 82% of intervals lie above 0.5 (10,000
    # replicates); with seed sd 0.2, 50%, the price of three seeds that disagree.
    rewards = _simulated_rewards(np.random.default_rng(32), N_REPLICATES, 0.62, 0.0)
    excludes, above = _verdict_rates(*rewards)
    assert above >= 0.7 and excludes == above


# --- Holm ----------------------------------------------------------------------------


def test_holm_known_example():
    adjusted = holm_adjust([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_passes_nan_through_and_does_not_count_it():
    adjusted = holm_adjust([0.01, math.nan, 0.02])
    assert math.isnan(adjusted[1])
    assert [adjusted[0], adjusted[2]] == pytest.approx([0.02, 0.02])  # m = 2, not 3


def test_holm_edge_cases():
    assert holm_adjust([]) == []
    assert holm_adjust([0.03]) == [0.03]
    assert holm_adjust([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm_adjust(np.array([0.2, 0.2])) == [0.4, 0.4]  # ties share a value
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm_adjust([0.1, 1.5])


def test_holm_is_monotone_and_matches_the_step_down_procedure():
    rng = np.random.default_rng(40)
    raw = np.concatenate([rng.uniform(size=12), rng.uniform(0, 0.01, size=4)])
    adjusted = np.array(holm_adjust(raw))
    order = np.argsort(raw)
    assert np.all(np.diff(adjusted[order]) >= 0)
    assert np.all(adjusted >= raw) and np.all(adjusted <= 1.0)
    m = len(raw)
    for alpha in (0.001, 0.01, 0.05, 0.2):
        # Holm: walk up the sorted p-values, rejecting while p_(j) <= alpha / (m - j + 1).
        rejected = set()
        for rank, i in enumerate(order):
            if raw[i] > alpha / (m - rank):
                break
            rejected.add(int(i))
        assert rejected == {int(i) for i in np.flatnonzero(adjusted <= alpha)}


# --- Detectable effect -------------------------------------------------------------------


def test_detectable_effect_known_value():
    assert detectable_effect(1.0) == pytest.approx(2.8016, abs=1e-4)
    assert detectable_effect(0.03) == pytest.approx(0.03 * 2.801585, rel=1e-6)
    assert detectable_effect(0.0) == 0.0
    # On 2 df (three seeds): t_{0.975} + t_{0.8} = 4.302653 + 1.060660.
    assert detectable_effect(1.0, df=2) == pytest.approx(5.363313, rel=1e-6)


def test_detectable_effect_is_detected_with_the_stated_power():
    se = 0.04
    effect = detectable_effect(se)
    estimates = np.random.default_rng(41).normal(0.5 + effect, se, size=20_000)
    power = np.mean(np.abs(estimates - 0.5) / se > NormalDist().inv_cdf(0.975))
    assert power == pytest.approx(0.8, abs=0.015)


def test_detectable_effect_grows_with_stricter_tests():
    se = 0.05
    assert detectable_effect(se, alpha=0.05 / 6) > detectable_effect(se)
    assert detectable_effect(se, power=0.9) > detectable_effect(se)
    assert detectable_effect(se, df=5) > detectable_effect(se)
    assert math.isnan(detectable_effect(math.nan))


@pytest.mark.parametrize(
    "kwargs", [{"alpha": 0.0}, {"alpha": 1.0}, {"power": 1.0}, {"power": 0.0}, {"df": 0.0}]
)
def test_detectable_effect_rejects_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        detectable_effect(0.1, **kwargs)
    with pytest.raises(ValueError):
        detectable_effect(-0.1)
