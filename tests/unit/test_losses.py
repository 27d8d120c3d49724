"""Loss tests on hand-picked inputs, the arithmetic written out beside each expected value."""

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

from orpo import losses
from orpo.losses import (
    bradley_terry_loss,
    cpo_loss,
    dpo_loss,
    dpo_rewards,
    ipo_loss,
    log1mexp,
    odds_ratio_loss,
    orpo_loss,
    scored_positions,
    sequence_logprobs,
    sft_loss,
    simpo_loss,
    token_logprobs,
    token_nll,
)

pytestmark = pytest.mark.unit

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def close(actual: torch.Tensor, expected, **kw) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, **kw)


def all_finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def test_docstring_examples_hold():
    # Every docstring's worked example is a doctest: a wrong number in the docs fails here.
    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 15
    assert result.failed == 0


# ---------------------------------------------------------------------------- odds ratio


def test_odds_ratio_loss_reference_values():
    # Pair 0: P_w = 1/2, P_l = 1/4
    #   odds_w = (1/2) / (1/2) = 1,  odds_l = (1/4) / (3/4) = 1/3
    #   log OR = ln(1 / (1/3)) = ln 3 = 1.0986
    #   L_OR = -ln sigmoid(ln 3) = -ln(3 / (1 + 3)) = ln(4/3) = 0.2877
    # Pair 1: P_w = P_l = e^-1: log OR = 0, L_OR = -ln(1/2) = ln 2
    # Pair 2: swapped pair 0 (P_w = 1/4, P_l = 1/2): log OR = -ln 3,
    #   L_OR = -ln sigmoid(-ln 3) = -ln(1 / (1 + 3)) = ln 4
    chosen = torch.tensor([math.log(0.5), -1.0, math.log(0.25)])  # (B,)
    rejected = torch.tensor([math.log(0.25), -1.0, math.log(0.5)])  # (B,)
    loss, log_odds = odds_ratio_loss(chosen, rejected)
    assert loss.shape == log_odds.shape == (3,)
    close(log_odds, [LN3, 0.0, -LN3])
    close(loss, [math.log(4 / 3), LN2, math.log(4.0)])


def test_odds_ratio_loss_matches_naive_formula_in_float64():
    # Away from 0 the naive log(P/(1-P)) is accurate in float64: a second, independent route.
    chosen = torch.tensor([-0.05, -0.7, -1.5, -8.0], dtype=torch.float64)
    rejected = torch.tensor([-0.2, -0.69, -4.0, -3.0], dtype=torch.float64)
    p_w, p_l = chosen.exp(), rejected.exp()
    naive = torch.log(p_w / (1 - p_w)) - torch.log(p_l / (1 - p_l))
    loss, log_odds = odds_ratio_loss(chosen, rejected)
    assert log_odds.dtype == torch.float64
    close(log_odds, naive, rtol=1e-12, atol=1e-12)
    close(loss, -torch.log(torch.sigmoid(naive)), rtol=1e-12, atol=1e-12)


def test_odds_ratio_gradient_matches_closed_form_eqs_8_to_10():
    # Derivation. With z = log OR = [lw - log(1 - e^lw)] - [ll - log(1 - e^ll)] and
    # L = -log sigmoid(z):
    #   dL/dz   = -(1 - sigmoid(z)) = -1 / (1 + e^z) = -1 / (1 + odds_w / odds_l) = -delta
    #   dz/dlw  = 1 + e^lw / (1 - e^lw) = 1 / (1 - P_w)
    #   dz/dll  = -(1 + e^ll / (1 - e^ll)) = -1 / (1 - P_l)
    # so dL/dlw = -delta / (1 - P_w) and dL/dll = +delta / (1 - P_l), i.e. grad L_OR = delta * h
    # with h = -grad lw / (1 - P_w) + grad ll / (1 - P_l) (the paper's Eq. 10 carries these
    # signs; descending the loss raises logp_w and lowers logp_l, weighted by 1 / (1 - P)).
    lw = torch.tensor([math.log(0.5), -0.01, -3.0, -1e-4, -40.0], dtype=torch.float64)
    ll = torch.tensor([math.log(0.25), -2.0, -0.5, -1e-3, -0.1], dtype=torch.float64)
    lw.requires_grad_(True)
    ll.requires_grad_(True)
    loss, _ = odds_ratio_loss(lw, ll)
    loss.sum().backward()  # examples are independent: d(sum)/dlw_i = dL_i/dlw_i

    p_w, p_l = lw.detach().exp(), ll.detach().exp()
    odds_w, odds_l = p_w / (1 - p_w), p_l / (1 - p_l)
    delta = 1 / (1 + odds_w / odds_l)
    close(lw.grad, -delta / (1 - p_w), rtol=1e-10, atol=1e-14)
    close(ll.grad, delta / (1 - p_l), rtol=1e-10, atol=1e-14)
    # First pair by hand: odds 1 and 1/3, delta = 1 / (1 + 3) = 1/4,
    # dL/dlw = -(1/4) / (1/2) = -1/2, dL/dll = (1/4) / (3/4) = 1/3.
    close(lw.grad[0], -0.5, rtol=1e-12, atol=0)
    close(ll.grad[0], 1 / 3, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_odds_ratio_finite_values_and_grads_at_extremes(dtype):
    # logp = 0 exactly (naive log(1 - exp(0)) = -inf), logp -> 0 (-1e-9 and -1e-6: in bf16
    # exp(logp) rounds to 1, so the naive formula gives -inf and NaN gradients, TRL #3237) and
    # logp = -50 (P = 2e-22, the far branch), in every pairing.
    extremes = [0.0, -1e-9, -1e-6, -50.0]
    grid = [(w, lo) for w in extremes for lo in extremes]
    chosen = torch.tensor([w for w, _ in grid], dtype=dtype, requires_grad=True)  # (16,)
    rejected = torch.tensor([lo for _, lo in grid], dtype=dtype, requires_grad=True)  # (16,)
    loss, log_odds = odds_ratio_loss(chosen, rejected)
    # Computed in float32 or wider whatever the input dtype.
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    assert loss.dtype == log_odds.dtype == wide
    loss.sum().backward()
    assert all_finite(loss, log_odds, chosen.grad, rejected.grad)
    assert chosen.grad.dtype == dtype  # autograd casts back to the leaf's dtype
    # Equal inputs give log OR = 0 and L_OR = ln 2, even at the clamp.
    same = torch.tensor([w == lo for w, lo in grid])
    close(log_odds[same], torch.zeros(int(same.sum())), atol=1e-6, rtol=0)
    close(loss[same], torch.full((int(same.sum()),), LN2), atol=1e-6, rtol=0)
    # The chosen sequence more likely than the rejected one means a positive log OR.
    assert bool((log_odds[torch.tensor([w > lo for w, lo in grid])] > 0).all())


def test_odds_ratio_float16_values_are_finite_and_float32():
    # Values only: just below the clamp the true gradient is about 1 / (1 - P) = 1 / |logp|,
    # ~1e6, which is finite in float32 but over float16's maximum (65504) once autograd casts it
    # back to a float16 leaf. Real log-probs come from sequence_logprobs in float32, and the
    # gradient reaching float16 logits is scaled by (onehot - softmax) / m, which is tiny there.
    extremes = torch.tensor([0.0, -1e-9, -1e-6, -50.0], dtype=torch.float16)  # (4,)
    loss, log_odds = odds_ratio_loss(extremes, extremes.flip(0))
    assert loss.dtype == log_odds.dtype == torch.float32
    assert all_finite(loss, log_odds)


def test_log1mexp_branches_and_clamp():
    # Both branches against the float64 naive formula: -0.01 and -0.5 use log(-expm1(a)),
    # -ln 2 - 1e-3 and -3 use log1p(-exp(a)).
    a = torch.tensor([-0.01, -0.5, -LN2 - 1e-3, -3.0], dtype=torch.float64)
    close(log1mexp(a), torch.log(1 - torch.exp(a)), rtol=1e-9, atol=0)
    # Far out the naive formula rounds 1 - e^-40 to 1 and returns 0; log1p keeps the value:
    # log(1 - x) = -x - x^2/2 - ... = -e^-40 = -4.248e-18 to double precision.
    far = log1mexp(torch.tensor([-40.0], dtype=torch.float64))
    close(far, [-math.exp(-40.0)], rtol=1e-12, atol=0)
    # Near 0 in float32 the naive formula has lost most digits; expm1 has not:
    # log(1 - e^-1e-4) = log(1e-4 - 5e-9 + ...) = -9.21039...
    close(log1mexp(torch.tensor([-1e-4])), [math.log(-math.expm1(-1e-4))], rtol=1e-6, atol=0)
    # Continuous across the branch point a = -ln 2 (both sides give ln(1/2)).
    around = torch.tensor([-LN2 + 1e-7, -LN2, -LN2 - 1e-7], dtype=torch.float64)
    close(log1mexp(around), torch.full((3,), -LN2, dtype=torch.float64), atol=1e-6, rtol=0)
    # a = 0 and a > 0 clamp to -1e-6: log(1 - e^-1e-6) = log(1e-6 - 5e-13) = -13.8155...
    at_zero = torch.tensor([0.0, -1e-9, 1e-3], requires_grad=True)
    out = log1mexp(at_zero)
    out.sum().backward()
    close(out, [math.log(1e-6)] * 3, rtol=1e-4, atol=0)
    assert all_finite(out, at_zero.grad)
    # bf16 is upcast: the result is float32, not a bf16 -inf.
    assert log1mexp(torch.tensor([0.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_odds_ratio_loss_rejects_broadcasting_shapes():
    # (B,) against (B, 1) would silently broadcast to (B, B).
    with pytest.raises(ValueError, match=r"\(3,\).*\(3, 1\)"):
        odds_ratio_loss(torch.full((3,), -1.0), torch.full((3, 1), -2.0))


# ---------------------------------------------------------------------------- ORPO


def test_orpo_loss_reference_value():
    # L_SFT = 2; L_OR = [ln(4/3), ln 2] = [0.2877, 0.6931] (see the odds-ratio test);
    # mean L_OR = 0.4904; lambda = 0.1 -> L_ORPO = 2 + 0.1 * 0.4904 = 2.0490.
    chosen = torch.tensor([math.log(0.5), -1.0])
    rejected = torch.tensor([math.log(0.25), -1.0])
    loss, or_loss, log_odds = orpo_loss(torch.tensor(2.0), chosen, rejected, orpo_lambda=0.1)
    assert loss.shape == ()
    close(loss, 2.0 + 0.1 * (math.log(4 / 3) + LN2) / 2)
    close(or_loss, [math.log(4 / 3), LN2])
    close(log_odds, [LN3, 0.0])


def test_orpo_lambda_zero_is_exactly_the_sft_loss():
    # The ORPO batch is 2B rows: chosen then rejected. L_SFT is on the chosen rows only.
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 7, generator=gen, requires_grad=True)  # (2B, T, V)
    labels = torch.randint(0, 7, (4, 6), generator=gen)  # (2B, T)
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]] * 4)  # (2B, T): prompt, response, padding
    logps = sequence_logprobs(logits, labels, mask, "mean")  # (2B,)
    nll = sft_loss(logits[:2], labels[:2], mask[:2])
    loss, or_loss, _ = orpo_loss(nll, logps[:2], logps[2:], orpo_lambda=0.0)
    # nll + 0.0 * finite is bit-identical to nll.
    assert torch.equal(loss, nll)
    assert all_finite(or_loss)
    # And the gradient is the SFT gradient.
    (grad_orpo,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (grad_sft,) = torch.autograd.grad(nll, logits)
    close(grad_orpo, grad_sft, rtol=0, atol=0)


def test_orpo_loss_gradient_reaches_logits_of_a_confident_model():
    # A model so sure of its tokens that every float32 log-prob rounds to 0 (logit margin 100:
    # log_softmax = -log(1 + 3 e^-100) = -1e-43 -> 0): the mean log-prob is exactly 0, where
    # log(1 - exp(logp)) is -inf. Values and gradients must stay finite end to end.
    labels = torch.tensor([[1, 2, 3, 0, 1], [1, 0, 0, 3, 2]])  # (2B, T), B = 1
    logits = torch.zeros(2, 5, 4)  # (2B, T, V)
    logits[:, :-1].scatter_(-1, labels[:, 1:].unsqueeze(-1), 100.0)
    logits.requires_grad_(True)
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 1]])  # (2B, T)
    logps = sequence_logprobs(logits, labels, mask, "mean")  # (2B,)
    assert bool((logps == 0).all())
    nll = sft_loss(logits[:1], labels[:1], mask[:1])
    loss, or_loss, log_odds = orpo_loss(nll, logps[:1], logps[1:], orpo_lambda=0.1)
    loss.backward()
    assert all_finite(loss, or_loss, log_odds, logits.grad)
    close(or_loss, [LN2])  # both clamp to -1e-6: log OR = 0


# ---------------------------------------------------------------------------- DPO and BT


def test_dpo_loss_reference_values():
    # Pair 0: pi_w = -10, ref_w = -12 (log-ratio +2); pi_l = -20, ref_l = -18 (log-ratio -2)
    #   beta * (2 - (-2)) = 0.1 * 4 = 0.4;  loss = -ln sigmoid(0.4) = ln(1 + e^-0.4)
    #   = ln(1 + 0.670320) = 0.513015
    # Pair 1: the policy prefers y_l: log-ratios -1 and +1 -> beta * (-2) = -0.2,
    #   loss = ln(1 + e^0.2) = ln(2.221403) = 0.798139
    pi_w = torch.tensor([-10.0, -5.0])
    pi_l = torch.tensor([-20.0, -5.0])
    ref_w = torch.tensor([-12.0, -4.0])
    ref_l = torch.tensor([-18.0, -6.0])
    loss = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1)
    close(loss, [0.513015, 0.798139], rtol=0, atol=1e-6)
    # Implicit rewards beta * (pi - ref): pair 0 -> 0.2 / -0.2, pair 1 -> -0.1 / 0.1.
    r_w, r_l = dpo_rewards(pi_w, pi_l, ref_w, ref_l, beta=0.1)
    close(r_w, [0.2, -0.1])
    close(r_l, [-0.2, 0.1])


def test_dpo_with_policy_equal_to_reference_gives_ln2():
    # Every log-ratio is 0, so loss = -ln sigmoid(0) = -ln(1/2) = ln 2, whatever beta and logps.
    logps_w = torch.tensor([-3.0, -120.0, 0.0])
    logps_l = torch.tensor([-7.5, -80.0, -1.0])
    for beta in (0.1, 0.5, 2.0):
        close(dpo_loss(logps_w, logps_l, logps_w, logps_l, beta=beta), [LN2] * 3)


def test_dpo_gradient_flows_to_policy_only_and_rewards_are_detached():
    pi_w = torch.tensor([-10.0], requires_grad=True)
    pi_l = torch.tensor([-20.0], requires_grad=True)
    ref_w = torch.tensor([-12.0], requires_grad=True)
    ref_l = torch.tensor([-18.0], requires_grad=True)
    dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1).sum().backward()
    # d/dpi_w -ln sigmoid(beta * m) = -beta * (1 - sigmoid(0.4)) = -0.1 * 0.401312 = -0.0401312
    close(pi_w.grad, [-0.1 * (1 - 1 / (1 + math.exp(-0.4)))])
    close(pi_l.grad, -pi_w.grad)
    assert ref_w.grad is None and ref_l.grad is None
    r_w, r_l = dpo_rewards(pi_w, pi_l, ref_w, ref_l, beta=0.1)
    assert not r_w.requires_grad and not r_l.requires_grad


def test_bradley_terry_loss_reference_values():
    # r_w - r_l = 2:     ln(1 + e^-2) = ln(1.135335) = 0.126928
    # r_w - r_l = 0:     ln 2
    # r_w - r_l = -ln 3: -ln sigmoid(-ln 3) = ln(1 + 3) = ln 4
    loss = bradley_terry_loss(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, LN3]))
    close(loss, [0.126928, LN2, math.log(4.0)], rtol=0, atol=1e-6)
    # bf16 rewards from a bf16 head: computed and returned in float32.
    bf16 = bradley_terry_loss(torch.tensor([2.0], dtype=torch.bfloat16), torch.zeros(1))
    assert bf16.dtype == torch.float32


def test_pairwise_losses_reject_mismatched_shapes():
    b, b1 = torch.zeros(3), torch.zeros(3, 1)
    with pytest.raises(ValueError, match="shape mismatch"):
        dpo_loss(b, b, b1, b, beta=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        bradley_terry_loss(b, b1)


# ---------------------------------------------------------------------------- log-probs


def hand_built_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B = 2, T = 4, V = 3, with the per-token probabilities chosen to be simple fractions.

    Row 0: prompt = token 0, response = tokens 1-2, token 3 is padding (label -100).
      logits[0, 0] = [ln 2, 0, 0] -> P = (2/4, 1/4, 1/4); next label 0 -> ln(1/2)
      logits[0, 1] = [0, 0, 0]    -> P = 1/3 each;       next label 2 -> ln(1/3)
      logits[0, 2] predicts the padding: ignored.  logits[0, 3] predicts nothing.
      sum = ln(1/2) + ln(1/3) = -ln 6 = -1.791759;  mean = -ln 6 / 2 = -0.895880
    Row 1: prompt = tokens 0-1, response = tokens 2-3.
      logits[1, 0] predicts a prompt token: ignored.
      logits[1, 1] = [ln 2, 0, 0]    -> P = (1/2, 1/4, 1/4); next label 1 -> ln(1/4)
      logits[1, 2] = [ln 2, ln 2, 0] -> P = (2/5, 2/5, 1/5); next label 2 -> ln(1/5)
      sum = ln(1/20) = -2.995732;  mean = -ln 20 / 2 = -1.497866
    """
    logits = torch.tensor(
        [
            [[LN2, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, -9.0, 3.0], [1.0, 2.0, 3.0]],
            [[5.0, 5.0, -5.0], [LN2, 0.0, 0.0], [LN2, LN2, 0.0], [7.0, 0.0, 0.0]],
        ]
    )  # (B, T, V)
    labels = torch.tensor([[2, 0, 2, -100], [1, 0, 1, 2]])  # (B, T)
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.bool)  # (B, T)
    return logits, labels, mask


def test_sequence_logprobs_hand_built_sum_and_mean():
    logits, labels, mask = hand_built_batch()
    close(sequence_logprobs(logits, labels, mask, "sum"), [-math.log(6), -math.log(20)])
    close(sequence_logprobs(logits, labels, mask, "mean"), [-math.log(6) / 2, -math.log(20) / 2])
    # A 0/1 integer mask is the same as a bool mask.
    close(sequence_logprobs(logits, labels, mask.long(), "sum"), [-math.log(6), -math.log(20)])


def test_sequence_logprobs_computes_in_float32_for_half_inputs():
    logits, labels, mask = hand_built_batch()
    out = sequence_logprobs(logits.to(torch.bfloat16), labels, mask, "mean")
    assert out.dtype == torch.float32
    # Only the bf16 rounding of the logits themselves remains (ln 2 -> 0.69140625).
    close(out, sequence_logprobs(logits, labels, mask, "mean"), rtol=0, atol=2e-3)
    assert sequence_logprobs(logits.double(), labels, mask, "sum").dtype == torch.float64


def random_batch(seed: int = 0):
    """B = 3, T = 10, V = 11: prompts of 2-4 tokens, responses, right padding labelled -100."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 10, 11, generator=gen)  # (B, T, V)
    labels = torch.randint(0, 11, (3, 10), generator=gen)  # (B, T)
    mask = torch.zeros(3, 10, dtype=torch.bool)  # (B, T)
    for row, (prompt_len, response_len) in enumerate([(2, 5), (4, 6), (3, 2)]):
        mask[row, prompt_len : prompt_len + response_len] = True
        labels[row, prompt_len + response_len :] = -100  # padding
    return logits, labels, mask


def test_sequence_logprobs_ignores_prompt_and_padding():
    logits, labels, mask = random_batch()
    before = {r: sequence_logprobs(logits, labels, mask, r) for r in ("sum", "mean")}
    # logits[:, t] only matter when labels[:, t + 1] counts; the last position never does.
    predicts_counted = torch.zeros_like(mask)
    predicts_counted[:, :-1] = mask[:, 1:]
    gen = torch.Generator().manual_seed(1)
    noisy_logits = torch.where(
        predicts_counted.unsqueeze(-1), logits, 50 * torch.randn(logits.shape, generator=gen)
    )  # (B, T, V)
    noisy_labels = torch.where(mask, labels, torch.randint(0, 11, labels.shape, generator=gen))
    for reduction, expected in before.items():
        after = sequence_logprobs(noisy_logits, noisy_labels, mask, reduction)
        assert torch.equal(after, expected), reduction
    # And the counted positions do matter: the test would catch a mask that was ignored.
    changed = logits.clone()
    changed[0, 2, labels[0, 3]] += 1.0  # labels[0, 3] is a response token
    assert not torch.equal(sequence_logprobs(changed, labels, mask, "sum"), before["sum"])


def test_sequence_logprobs_mean_is_sum_over_token_count():
    logits, labels, mask = random_batch()
    n_tokens = mask[:, 1:].sum(-1)  # (B,): 5, 6, 2 response tokens (none at position 0)
    assert n_tokens.tolist() == [5, 6, 2]
    close(
        sequence_logprobs(logits, labels, mask, "mean") * n_tokens,
        sequence_logprobs(logits, labels, mask, "sum"),
    )


def test_sequence_logprobs_treats_label_minus_100_as_ignored_even_under_the_mask():
    logits, labels, mask = random_batch()
    everything = torch.ones_like(mask)  # counts whatever labels are not -100
    full = sequence_logprobs(logits, labels, everything, "sum")
    # The same as masking prompt + response by hand (padding is the -100 tail).
    no_pad = labels != -100
    close(full, sequence_logprobs(logits, labels, no_pad, "sum"), rtol=0, atol=0)


def test_scored_positions_are_the_ones_that_predict_a_counted_token():
    _, labels, mask = hand_built_batch()
    # Row 0 counts labels 1-2 (predicted from positions 0-1); row 1 counts 2-3 (from 1-2).
    assert scored_positions(labels, mask).tolist() == [
        [True, True, False, False],
        [False, True, True, False],
    ]


def test_logits_of_the_scored_positions_alone_give_the_same_logprobs_and_gradients():
    torch.manual_seed(0)
    labels = torch.randint(0, 11, (5, 9))  # (B, T), V = 11
    labels[0, 6:] = -100  # padding
    mask = torch.rand(5, 9) < 0.6
    full = torch.randn(5, 9, 11, dtype=torch.float64, requires_grad=True)
    keep = scored_positions(labels, mask)
    scored = full.detach()[keep].requires_grad_()  # (N, V), what the model returns
    a, b = token_logprobs(full, labels, mask), token_logprobs(scored, labels, mask)
    assert torch.equal(a.counts, b.counts)
    close(b.values, a.values, rtol=0, atol=1e-12)
    a.sequence("sum").square().sum().backward()
    b.sequence("sum").square().sum().backward()
    close(scored.grad, full.grad[keep], rtol=0, atol=1e-12)
    assert not full.grad[~keep].any()  # nothing flows to the positions left out


def test_sequence_logprobs_shape_and_argument_errors():
    logits, labels, mask = hand_built_batch()  # (2, 4, 3), (2, 4), (2, 4)
    with pytest.raises(ValueError, match=r"\(2, 4, 3\).*\(2, 5\).*\(2, 4\)"):
        sequence_logprobs(logits, torch.zeros(2, 5, dtype=torch.long), mask, "sum")
    with pytest.raises(ValueError, match=r"mask \(2, 3\)"):
        sequence_logprobs(logits, labels, mask[:, :3], "sum")
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        sequence_logprobs(logits[0, 0], labels, mask, "sum")  # (3,): neither (B, T, V) nor (N, V)
    with pytest.raises(ValueError, match=r"\(3, 3\) hold 3 positions.*count 4 tokens"):
        sequence_logprobs(logits[0, :3], labels, mask, "sum")  # (N, V) with N not the count
    with pytest.raises(ValueError, match="reduction"):
        sequence_logprobs(logits, labels, mask, "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integer"):
        sequence_logprobs(logits, labels.float(), mask, "sum")
    # Row 1 has no counted token after the shift (its only masked token is position 0).
    empty = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(ValueError, match=r"zero tokens: rows \[1\]"):
        sequence_logprobs(logits, labels, empty, "mean")
    close(sequence_logprobs(logits, labels, empty, "sum")[1], 0.0)  # an empty sum is 0


# ---------------------------------------------------------------------------- SFT / NLL


def test_token_nll_and_sft_loss_match_cross_entropy():
    logits, labels, mask = random_batch()
    logits.requires_grad_(True)
    # The same shift written the PyTorch way: positions that do not count get ignore_index.
    shifted_logits = logits[:, :-1].reshape(-1, 11)  # (B * (T-1), V)
    shifted_labels = labels[:, 1:].masked_fill(~mask[:, 1:], -100).reshape(-1)  # (B * (T-1),)
    nll, n_tokens = token_nll(logits, labels, mask)
    assert nll.shape == n_tokens.shape == ()
    assert nll.dtype == torch.float32 and n_tokens.item() == 5 + 6 + 2
    ce_sum = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100, reduction="sum")
    ce_mean = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)
    close(nll, ce_sum.detach())
    loss = sft_loss(logits, labels, mask)
    close(loss, ce_mean.detach())
    (grad_ours,) = torch.autograd.grad(loss, logits)
    (grad_ce,) = torch.autograd.grad(ce_mean, logits)
    close(grad_ours, grad_ce)
    # Hand-built batch: NLL = ln 6 + ln 20 = ln 120 = 4.787492 over 2 + 2 tokens.
    hand_nll, hand_n = token_nll(*hand_built_batch())
    close(hand_nll, math.log(120))
    assert hand_n.item() == 4
    close(sft_loss(*hand_built_batch()), math.log(120) / 4)


def test_token_nll_normalises_gradient_accumulation_by_total_tokens():
    # Two micro-batches with 5 + 6 and 2 response tokens. The window's loss is
    # (NLL_1 + NLL_2) / (11 + 2), which equals L_SFT on the concatenated batch; the mean of the
    # two micro-batch means weights the 2 tokens of micro-batch 2 like the 11 of micro-batch 1.
    logits, labels, mask = random_batch()
    nll_1, n_1 = token_nll(logits[:2], labels[:2], mask[:2])
    nll_2, n_2 = token_nll(logits[2:], labels[2:], mask[2:])
    assert (n_1.item(), n_2.item()) == (11, 2)
    window = (nll_1 + nll_2) / (n_1 + n_2)
    close(window, sft_loss(logits, labels, mask))
    mean_of_means = (nll_1 / n_1 + nll_2 / n_2) / 2
    assert not torch.allclose(mean_of_means, window)


def test_sft_loss_over_zero_tokens_raises():
    logits, labels, _ = hand_built_batch()
    with pytest.raises(ValueError, match="zero tokens"):
        sft_loss(logits, labels, torch.zeros(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------- SimPO, CPO, IPO


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_simpo_loss_reference_values():
    # Mean log-probs, margin gamma in reward units: logits = beta * (c - r) - gamma.
    # Pair 0: c = -1, r = -2, beta = 2, gamma = 1: 2 * 1 - 1 = 1, loss = ln(1 + e^-1) = 0.313262
    # Pair 1: c = -1, r = -1.25: 2 * 0.25 - 1 = -0.5, loss = ln(1 + e^0.5) = 0.974077
    # Pair 2: c = r = -0.7: 0 - 1 = -1, loss = ln(1 + e^1) = 1.313262 (the margin costs even a tie)
    chosen = torch.tensor([-1.0, -1.0, -0.7])  # (B,)
    rejected = torch.tensor([-2.0, -1.25, -0.7])  # (B,)
    loss = simpo_loss(chosen, rejected, beta=2.0, gamma=1.0)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    close(loss, [0.313262, 0.974077, 1.313262], rtol=0, atol=1e-6)
    # beta * (c - r) == gamma is the break-even point: 2.5 * 0.2 - 0.5 = 0, loss = ln 2.
    close(simpo_loss(torch.tensor([-1.0]), torch.tensor([-1.2]), beta=2.5, gamma=0.5), [LN2])


def test_simpo_matches_the_reference_implementations_gamma_beta_ratio_form():
    # princeton-nlp/SimPO and TRL's CPOTrainer(loss_type="simpo") compute
    #   logits = (c - r) - gamma_beta_ratio;  loss = -logsigmoid(beta * logits)
    # with gamma_beta_ratio = gamma / beta: the same function as beta * (c - r) - gamma.
    # The released configs: (beta, gamma/beta) = (2.0, 0.8), (2.5, 0.1), (2.0, 0.5), (2.5, 0.55).
    gen = torch.Generator().manual_seed(0)
    chosen = -3 * torch.rand(16, generator=gen, dtype=torch.float64)  # (B,) mean log-probs
    rejected = -3 * torch.rand(16, generator=gen, dtype=torch.float64)  # (B,)
    for beta, ratio in [(2.0, 0.8), (2.5, 0.1), (2.0, 0.5), (2.5, 0.55), (10.0, 0.3)]:
        reference = -F.logsigmoid(beta * ((chosen - rejected) - ratio))
        ours = simpo_loss(chosen, rejected, beta=beta, gamma=ratio * beta)
        close(ours, reference, rtol=1e-12, atol=1e-12)


def test_simpo_with_zero_margin_is_cpo_and_a_margin_only_adds_loss():
    gen = torch.Generator().manual_seed(1)
    chosen = -5 * torch.rand(8, generator=gen)  # (B,)
    rejected = -5 * torch.rand(8, generator=gen)  # (B,)
    for beta in (0.1, 2.0, 2.5):
        cpo = cpo_loss(chosen, rejected, beta=beta)
        assert torch.equal(simpo_loss(chosen, rejected, beta=beta, gamma=0.0), cpo)
        # -log sigmoid is decreasing, so subtracting gamma > 0 from the logit raises every loss.
        assert bool((simpo_loss(chosen, rejected, beta=beta, gamma=0.5) > cpo).all())


def test_cpo_loss_reference_values_and_equals_dpo_with_a_uniform_reference():
    # Summed log-probs, beta = 0.1:
    # Pair 0: c = -12, r = -17: 0.1 * 5 = 0.5, loss = ln(1 + e^-0.5) = 0.474077
    # Pair 1: swapped: -0.5, loss = ln(1 + e^0.5) = 0.974077
    # Pair 2: c = r: ln 2
    chosen = torch.tensor([-12.0, -17.0, -30.0])  # (B,)
    rejected = torch.tensor([-17.0, -12.0, -30.0])  # (B,)
    loss = cpo_loss(chosen, rejected, beta=0.1)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    close(loss, [0.474077, 0.974077, LN2], rtol=0, atol=1e-6)
    # CPO's L_prefer is DPO with pi_ref(y_w|x) = pi_ref(y_l|x): any equal reference cancels.
    for k in (0.0, -25.0):
        same_ref = torch.full((3,), k)
        close(dpo_loss(chosen, rejected, same_ref, same_ref, beta=0.1), loss)


def test_ipo_loss_reference_values():
    # h = (pi_w - ref_w) - (pi_l - ref_l); loss = (h - 1/(2 tau))^2.
    # Pair 0: (-1 - -1.5) - (-2 - -1.5) = 0.5 + 0.5 = 1;  tau = 0.1: (1 - 5)^2 = 16
    # Pair 1: (-3 - -2) - (-1 - -1) = -1;                 tau = 0.1: (-1 - 5)^2 = 36
    # Pair 2: (-0.5 - -3) - (-2.5 - -2.5) = 2.5;          tau = 0.1: (2.5 - 5)^2 = 6.25
    pi_w = torch.tensor([-1.0, -3.0, -0.5])
    pi_l = torch.tensor([-2.0, -1.0, -2.5])
    ref_w = torch.tensor([-1.5, -2.0, -3.0])
    ref_l = torch.tensor([-1.5, -1.0, -2.5])
    loss = ipo_loss(pi_w, pi_l, ref_w, ref_l, tau=0.1)
    assert loss.shape == (3,) and loss.dtype == torch.float32
    close(loss, [16.0, 36.0, 6.25])
    # tau = 0.5: target 1 -> [0, 4, 2.25];  tau = 0.25: target 2 -> [1, 9, 0.25]
    close(ipo_loss(pi_w, pi_l, ref_w, ref_l, tau=0.5), [0.0, 4.0, 2.25])
    close(ipo_loss(pi_w, pi_l, ref_w, ref_l, tau=0.25), [1.0, 9.0, 0.25])
    with pytest.raises(ValueError, match="tau"):
        ipo_loss(pi_w, pi_l, ref_w, ref_l, tau=0.0)


def test_ipo_has_its_minimum_at_h_equal_one_over_two_tau():
    # Sweep h through the target 1/(2 tau) = 2.5 (tau = 0.2) by moving pi_w alone.
    tau = 0.2
    target = 1 / (2 * tau)
    h = torch.linspace(0.0, 5.0, 51, dtype=torch.float64)  # (51,), h[25] = 2.5
    pi_w = h.clone().requires_grad_(True)  # with the other three 0, h = pi_w
    zeros = torch.zeros_like(h)
    loss = ipo_loss(pi_w, zeros, zeros, zeros, tau=tau)
    loss.sum().backward()
    assert int(loss.argmin()) == 25 and math.isclose(h[25].item(), target)
    close(loss[25], 0.0, atol=1e-24, rtol=0)
    # dL/dpi_w = 2 (h - target): below the target raising the chosen log-prob lowers the loss,
    # above it IPO pushes back (DPO's loss would keep falling).
    close(pi_w.grad, 2 * (h - target), rtol=1e-12, atol=1e-12)
    assert bool((pi_w.grad[:25] < 0).all()) and bool((pi_w.grad[26:] > 0).all())
    assert bool((loss[1:26] < loss[:25]).all()) and bool((loss[26:] > loss[25:50]).all())


def four_logps(dtype: torch.dtype) -> list[torch.Tensor]:
    """pi_w, pi_l, ref_w, ref_l, (B,) = (2,), leaves with requires_grad."""
    values = [[-1.0, -2.0], [-2.0, -1.5], [-1.5, -1.8], [-1.5, -1.2]]
    return [torch.tensor(v, dtype=dtype, requires_grad=True) for v in values]


NEW_LOSSES = {
    "simpo": lambda pw, pl, rw, rl: simpo_loss(pw, pl, beta=2.0, gamma=0.5),
    "cpo": lambda pw, pl, rw, rl: cpo_loss(pw, pl, beta=0.1),
    "ipo": lambda pw, pl, rw, rl: ipo_loss(pw, pl, rw, rl, tau=0.1),
}


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_new_losses_shapes_and_dtypes(name, dtype):
    loss = NEW_LOSSES[name](*four_logps(dtype))
    assert loss.shape == (2,)
    # Computed in float32 or wider whatever the input dtype.
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert all_finite(loss)


@pytest.mark.parametrize("name", sorted(NEW_LOSSES))
def test_new_losses_gradient_direction(name):
    # Raising the chosen log-prob lowers the loss, raising the rejected one raises it. For IPO
    # that holds below the target: here h = (0.5 - -0.5, -0.2 - -0.3) = (1.0, 0.1), under 5.
    pi_w, pi_l, ref_w, ref_l = four_logps(torch.float32)
    NEW_LOSSES[name](pi_w, pi_l, ref_w, ref_l).sum().backward()
    assert bool((pi_w.grad < 0).all()), pi_w.grad
    assert bool((pi_l.grad > 0).all()), pi_l.grad
    # The reference is frozen: no gradient reaches it (CPO and SimPO do not take it at all).
    assert ref_w.grad is None and ref_l.grad is None


def test_simpo_and_cpo_gradient_matches_closed_form():
    # L = -log sigmoid(z), z = beta (c - r) - gamma:  dL/dc = -beta sigmoid(-z), dL/dr = +beta sigmoid(-z)
    # c = -1, r = -2, beta = 2, gamma = 1: z = 1, dL/dc = -2 * sigmoid(-1) = -2 * 0.268941 = -0.537883
    c = torch.tensor([-1.0], requires_grad=True)
    r = torch.tensor([-2.0], requires_grad=True)
    simpo_loss(c, r, beta=2.0, gamma=1.0).sum().backward()
    close(c.grad, [-2 * sigmoid(-1.0)])
    close(r.grad, [2 * sigmoid(-1.0)])


def test_new_losses_reject_mismatched_shapes():
    b, b1 = torch.zeros(3), torch.zeros(3, 1)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3,\).*\(3, 1\)"):
        simpo_loss(b, b1, beta=2.0, gamma=0.5)
    with pytest.raises(ValueError, match=r"shape mismatch.*\(3,\).*\(3, 1\)"):
        cpo_loss(b, b1, beta=0.1)
    with pytest.raises(ValueError, match="shape mismatch"):
        ipo_loss(b, b, b1, b, tau=0.1)
