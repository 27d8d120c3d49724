"""Win rates on constructed rewards: exact point estimates, bootstrap behaviour, errors."""

import math

import numpy as np
import pytest

from orpo.metrics import WinRate, pairwise_outcomes, pooled_win_rate, win_rate

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
    assert result.as_dict() == {
        "win_rate": 1.0,
        "sd_rounds": 0.0,
        "per_round": [1.0, 1.0],
        "ci_low": 1.0,
        "ci_high": 1.0,
        "n_prompts": 2,
        "n_rounds": 2,
        "n_seeds": 1,
    }
