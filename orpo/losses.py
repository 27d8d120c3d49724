"""The math of the lab: per-sequence log-probs and the SFT, ORPO, DPO and Bradley-Terry losses,
plus the methods the ORPO paper did not compare (SimPO, CPO, IPO).

Pure functions of tensors (torch only; no logging, no I/O). Every loss takes per-sequence
log-probs from the one helper, :func:`token_logprobs` (one log-softmax per forward pass,
reduced per sequence by :meth:`TokenLogprobs.sequence` or :func:`sequence_logprobs`), and
returns per-example values, so the caller decides how to reduce and what to log. One name per
quantity (the README's "The math"): ``orpo_lambda`` is ORPO's lambda, ``beta`` is DPO's beta.
The added methods keep their papers' letters: ``beta`` of SimPO and CPO is each method's own
inverse temperature (SimPO's is ~2, the others' ~0.1: never share one config value between
them), ``gamma`` is SimPO's target reward margin, ``tau`` is IPO's regularisation strength.

Shape letters: B = batch (pairs), T = sequence length, V = vocabulary.

References:
    ORPO: Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference
    Model", 2024, arXiv 2403.07691 (Eqs. 3-10).
    DPO: Rafailov et al., "Direct Preference Optimization", 2023, arXiv 2305.18290 (Eq. 7).
    SimPO: Meng, Xia, Chen, "SimPO: Simple Preference Optimization with a Reference-Free
    Reward", 2024, arXiv 2405.14734 (Eq. 6).
    CPO: Xu et al., "Contrastive Preference Optimization: Pushing the Boundaries of LLM
    Performance in Machine Translation", 2024, arXiv 2401.08417 (L_prefer, L_CPO).
    IPO: Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", 2023, arXiv 2310.12036 (Eq. 17, Algorithm 1).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value that never counts as a token (the Hugging Face / PyTorch convention)."""

LOG1MEXP_MAX = -1e-6
"""log1mexp clamps its input to at most this: log(1 - exp(0)) = -inf, and a mean log-prob of
exactly 0 is reachable (a confident model in float32 rounds every token log-prob to 0)."""

_LN2 = math.log(2.0)

__all__ = [
    "IGNORE_INDEX",
    "LOG1MEXP_MAX",
    "TokenLogprobs",
    "bradley_terry_loss",
    "cpo_loss",
    "dpo_loss",
    "dpo_rewards",
    "ipo_loss",
    "log1mexp",
    "odds_ratio_loss",
    "orpo_loss",
    "scored_positions",
    "sequence_logprobs",
    "sft_loss",
    "simpo_loss",
    "token_logprobs",
    "token_nll",
]


def _compute_dtype(t: Tensor) -> torch.dtype:
    """float32, or float64 if ``t`` already is: never bf16/fp16 (TRL #3237, axolotl #3910)."""
    return torch.promote_types(t.dtype, torch.float32)


def _upcast(t: Tensor) -> Tensor:
    return t.to(_compute_dtype(t))


def _check_same_shape(**tensors: Tensor) -> None:
    """Pairwise losses must not broadcast: (B,) against (B, 1) would silently give (B, B)."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; all must have the same shape (B,)")


class TokenLogprobs(NamedTuple):
    """Next-token log-probs of one forward pass, shifted and masked once, both (B, T-1).

    Every per-sequence reduction and the NLL of the same rows read these instead of
    recomputing the (B, T, V) log-softmax: at a 49k vocabulary one log-softmax costs about as
    much as a tenth of the whole step, and each keeps a (B, T, V) tensor alive for backward.
    """

    values: Tensor  # (B, T-1) log P(label[t + 1] | ...); 0 where the token does not count
    counts: Tensor  # (B, T-1) bool: the token counts (mask set, label not -100)

    def rows(self, rows: slice) -> TokenLogprobs:
        return TokenLogprobs(self.values[rows], self.counts[rows])

    def sequence(self, reduction: Literal["sum", "mean"]) -> Tensor:
        """(B,): summed over each row's counted tokens, or their mean (ORPO Eq. 3)."""
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        summed = self.values.sum(dim=-1)  # (B,)
        if reduction == "sum":
            return summed
        n_tokens = self.counts.sum(dim=-1)  # (B,)
        # On the meta device (shape-only runs, how tests stand in for a GPU) no value is known.
        if not n_tokens.is_meta and bool((n_tokens == 0).any()):
            empty = torch.nonzero(n_tokens == 0).flatten().tolist()
            raise ValueError(
                f"reduction='mean' over zero tokens: rows {empty} have no masked token after the "
                "shift (empty or fully truncated response)"
            )
        return summed / n_tokens  # (B,)

    def nll(self) -> tuple[Tensor, Tensor]:
        """(summed NLL over every counted token, how many there are): scalars."""
        return -self.values.sum(), self.counts.sum()


def _counted(labels: Tensor, mask: Tensor) -> Tensor:
    """(B, T-1) bool: label t + 1 counts (mask set there, label not IGNORE_INDEX)."""
    return mask[:, 1:].bool() & (labels[:, 1:] != IGNORE_INDEX)


def scored_positions(labels: Tensor, mask: Tensor) -> Tensor:
    """(B, T) bool: the positions whose logits predict a counted token, the only ones
    :func:`token_logprobs` reads. Given to a Hugging Face causal LM as ``logits_to_keep``, it
    projects only these hidden states onto the vocabulary and returns (N, V) logits, N = the
    number set, in row-major order; :func:`token_logprobs` takes those as they are.

    >>> scored_positions(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[0, 1, 1, 0]])).tolist()
    [[True, True, False, False]]
    """
    counted = _counted(labels, mask)  # (B, T-1)
    return torch.cat([counted, counted.new_zeros(len(counted), 1)], dim=1)


def token_logprobs(logits: Tensor, labels: Tensor, mask: Tensor) -> TokenLogprobs:
    """The one log-prob helper: log-prob of each next token and whether it counts.

    Position t of ``logits`` predicts ``labels[:, t + 1]``; a token counts when ``mask`` is set
    there and its label is not IGNORE_INDEX. Tokens that do not count get log-prob 0. The
    log-softmax is computed in float32 (float64 for float64 logits) whatever the input dtype.

    Args:
        logits: (B, T, V) model outputs, any float dtype; or (N, V), the logits of only the
            N positions :func:`scored_positions` sets, in row-major order (what a model given
            them as ``logits_to_keep`` returns): the same result without projecting and
            normalising the positions nothing reads.
        labels: (B, T) token ids; -100 marks positions that never count.
        mask: (B, T) bool or 0/1; set on the tokens that count.

    Returns:
        ``TokenLogprobs(values, counts)``, both (B, T-1).

    Raises:
        ValueError: on shapes that do not match (the message names them) or float labels.

    Example: the row of :func:`sequence_logprobs`'s example gives per-token log-probs
    (ln 3/4, ln 1/2): (-0.2877, -0.6931); from its two scored positions alone, the same.

    >>> logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    >>> labels, mask = torch.tensor([[1, 0, 1]]), torch.tensor([[0, 1, 1]])
    >>> tokens = token_logprobs(logits, labels, mask)
    >>> [round(v, 4) for v in tokens.values[0].tolist()], tokens.counts[0].tolist()
    ([-0.2877, -0.6931], [True, True])
    >>> scored = logits[scored_positions(labels, mask)]  # (2, 2)
    >>> [round(v, 4) for v in token_logprobs(scored, labels, mask).values[0].tolist()]
    [-0.2877, -0.6931]
    """
    if labels.dim() != 2 or tuple(mask.shape) != tuple(labels.shape):
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and "
            f"mask {tuple(mask.shape)}: labels and mask must both be (B, T)"
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer token ids, got dtype {labels.dtype}")
    counts = _counted(labels, mask)  # (B, T-1)
    if logits.dim() == 2:
        return _scored_logprobs(logits, labels, counts)
    bt = tuple(labels.shape)
    if logits.dim() != 3 or tuple(logits.shape[:2]) != bt:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)} must be (B, T, V) with (B, T) = "
            f"{bt}, the shape of labels and mask, or (N, V) over the scored positions"
        )
    # gather needs a valid index everywhere; positions that do not count read token 0 and are
    # zeroed below, so whatever sits in labels there (-100, padding) cannot change the result.
    safe_labels = labels[:, 1:].masked_fill(~counts, 0).long()  # (B, T-1)
    # log_softmax in float32 (or wider): in bf16 the normaliser loses ~3 significant digits.
    # Over all T positions, then cut: the kernel would first copy a (B, T-1, V) slice whole.
    logps = _upcast(logits).log_softmax(dim=-1)[:, :-1]  # (B, T-1, V)
    token_logps = logps.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    # where, not multiply: a -inf log-prob at an ignored position times 0 would be NaN.
    return TokenLogprobs(torch.where(counts, token_logps, 0.0), counts)


def _scored_logprobs(logits: Tensor, labels: Tensor, counts: Tensor) -> TokenLogprobs:
    """token_logprobs for (N, V) logits of the counted tokens' positions, row-major."""
    # On the meta device (shape-only runs) no count is known; masked_scatter checks there.
    if not counts.is_meta and len(logits) != int(counts.sum()):
        raise ValueError(
            f"logits {tuple(logits.shape)} hold {len(logits)} positions, but labels and mask "
            f"{tuple(labels.shape)} count {int(counts.sum())} tokens: (N, V) logits must be "
            "those of exactly the positions scored_positions(labels, mask) sets"
        )
    targets = labels[:, 1:][counts].long()  # (N,)
    logps = _upcast(logits).log_softmax(dim=-1)  # (N, V)
    token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    values = token_logps.new_zeros(counts.shape).masked_scatter(counts, token_logps)
    return TokenLogprobs(values, counts)  # values (B, T-1): 0 where nothing counts


def sequence_logprobs(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor,
    reduction: Literal["sum", "mean"],
) -> Tensor:
    r"""Per-sequence log-prob of the tokens selected by ``mask`` (the response), shape (B,).

    ORPO paper Eq. 3 (``reduction="mean"``, length-normalised over the m counted tokens):

    .. math:: \log P_\theta(y|x) = \frac{1}{m} \sum_{t=1}^{m} \log P_\theta(y_t | x, y_{<t})

    ``reduction="sum"`` drops the 1/m: the summed log-prob that DPO uses.

    The shift is done here: ``logits[:, t]`` predicts ``labels[:, t + 1]``, and that token
    counts when ``mask[:, t + 1]`` is set and the label is not -100. The log-softmax is
    computed in float32 (float64 for float64 logits) whatever the input dtype.

    Args:
        logits: (B, T, V) model outputs, any float dtype.
        labels: (B, T) token ids; -100 marks positions that never count.
        mask: (B, T) bool or 0/1; set on the tokens that count (response tokens), unset on
            prompt and padding.
        reduction: "sum" (DPO) or "mean" (ORPO).

    Returns:
        (B,) float32 (float64 for float64 logits).

    Raises:
        ValueError: on shapes that do not match (the message names them), an unknown
            reduction, or ``reduction="mean"`` for a row with no counted token.

    Example: one row of T = 3, V = 2; the prompt is token 0, the response tokens 1 and 2.
    ``logits[0, 0] = [ln 3, 0]`` gives P = (3/4, 1/4) for label 0; ``logits[0, 1] = [0, 0]``
    gives P = 1/2 for label 1; ``logits[0, 2]`` predicts nothing. Sum = ln(3/4) + ln(1/2) =
    ln(3/8) = -0.9808; mean = -0.9808 / 2 = -0.4904.

    >>> logits = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [5.0, -5.0]]])  # (1, 3, 2)
    >>> labels = torch.tensor([[1, 0, 1]])  # (1, 3); labels[0, 0] is the prompt
    >>> mask = torch.tensor([[0, 1, 1]])  # (1, 3)
    >>> round(sequence_logprobs(logits, labels, mask, "sum").item(), 4)
    -0.9808
    >>> round(sequence_logprobs(logits, labels, mask, "mean").item(), 4)
    -0.4904
    """
    return token_logprobs(logits, labels, mask).sequence(reduction)


def token_nll(logits: Tensor, labels: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    r"""Summed token negative log-likelihood and the number of tokens it sums over.

    .. math:: \mathrm{NLL} = -\sum_{b} \sum_{t} \log P_\theta(y_{b,t} | x_b, y_{b,<t}),
       \qquad n = \#\{(b, t) \text{ counted}\}

    Same shift and masking as :func:`sequence_logprobs`. Returning the sum and the count
    separately is what makes gradient accumulation right (TRL #2628/#3716): over an
    accumulation window the loss is (sum of the micro-batches' NLL) / (sum of their counts),
    not the mean of per-micro-batch means, which over-weights short micro-batches.

    Args:
        logits: (B, T, V); labels: (B, T), -100 ignored; mask: (B, T) bool or 0/1.

    Returns:
        ``(nll, n_tokens)``: a float32 (float64 for float64 logits) scalar and an int64 scalar.

    Example: uniform logits over V = 4 give every token NLL ln 4 = 1.3863; two rows with 2
    and 1 counted tokens give NLL = 3 ln 4 = 4.1589 over n = 3 tokens.

    >>> logits = torch.zeros(2, 3, 4)  # (B, T, V)
    >>> labels = torch.tensor([[0, 1, 2], [0, 1, -100]])  # (B, T)
    >>> mask = torch.tensor([[0, 1, 1], [0, 1, 0]])  # (B, T): token 0 is the prompt
    >>> nll, n = token_nll(logits, labels, mask)
    >>> round(nll.item(), 4), n.item()
    (4.1589, 3)
    """
    return token_logprobs(logits, labels, mask).nll()


def sft_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> Tensor:
    r"""L_SFT: token-level mean NLL over the counted tokens (ORPO paper Eq. 6's first term).

    .. math:: \mathcal{L}_{SFT} = -\frac{1}{n} \sum_{b, t} \log P_\theta(y_{b,t} | x_b, y_{b,<t})

    Which tokens count (response only, or prompt too: ``nll_scope``) is the caller's ``mask``.

    Args:
        logits: (B, T, V); labels: (B, T), -100 ignored; mask: (B, T) bool or 0/1.

    Returns:
        Scalar float32 (float64 for float64 logits).

    Raises:
        ValueError: if no token counts (the mean would be 0/0).

    Example: uniform logits over V = 4: every token has NLL ln 4, so L_SFT = 1.3863.

    >>> round(sft_loss(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), torch.ones(1, 3)).item(), 4)
    1.3863
    """
    nll, n_tokens = token_nll(logits, labels, mask)
    if int(n_tokens) == 0:
        raise ValueError("sft_loss over zero tokens: the mask selects nothing after the shift")
    return nll / n_tokens


def log1mexp(a: Tensor) -> Tensor:
    r"""log(1 - exp(a)) for a <= 0, stable everywhere, with finite value and gradient at a = 0.

    .. math:: \mathrm{log1mexp}(a) = \begin{cases} \log(-\mathrm{expm1}(a)) & a > -\ln 2 \\
       \mathrm{log1p}(-\exp(a)) & a \le -\ln 2 \end{cases}

    (Maechler, "Accurately computing log(1 - exp(-|a|))", 2012.) Near 0, ``1 - exp(a)``
    cancels catastrophically and ``expm1`` does not; far below, ``exp(a)`` is tiny and
    ``log1p`` keeps it. ``a`` is first clamped to at most LOG1MEXP_MAX = -1e-6, so a = 0 gives
    log(1e-6) = -13.8155 instead of -inf (and zero gradient there rather than NaN). Computed in
    float32, or float64 for float64 input; bf16/fp16 are upcast (in bf16, exp(a) rounds to 1 for
    any a > -2**-9 and the naive formula returns -inf).

    Args:
        a: any shape, values <= 0 (log-probs); larger values are clamped.

    Returns:
        Same shape as ``a``, float32 or float64.

    Example: log1mexp(ln 0.5) = ln(1 - 0.5) = -0.6931; log1mexp(ln 0.25) = ln 0.75 = -0.2877.

    >>> [round(v, 4) for v in log1mexp(torch.tensor([math.log(0.5), math.log(0.25)])).tolist()]
    [-0.6931, -0.2877]
    """
    a = _upcast(a).clamp(max=LOG1MEXP_MAX)
    near_zero = a > -_LN2
    # Each branch only ever sees inputs where it is finite: torch.where's backward multiplies the
    # discarded branch's gradient by 0, and 0 * inf = NaN, so masking the output is not enough.
    a_near = torch.where(near_zero, a, -_LN2)
    a_far = torch.where(near_zero, -1.0, a)
    return torch.where(near_zero, torch.log(-torch.expm1(a_near)), torch.log1p(-torch.exp(a_far)))


def odds_ratio_loss(chosen_logps: Tensor, rejected_logps: Tensor) -> tuple[Tensor, Tensor]:
    r"""Per-example odds-ratio loss L_OR and the log odds ratio (ORPO paper Eqs. 4, 5, 7).

    .. math::
        \mathrm{odds}_\theta(y|x) = \frac{P_\theta(y|x)}{1 - P_\theta(y|x)} \quad (4)

        \log \mathrm{OR}_\theta = \log \frac{\mathrm{odds}_\theta(y_w|x)}
            {\mathrm{odds}_\theta(y_l|x)}
          = (\log P_w - \log P_l) - (\mathrm{log1mexp}(\log P_w) - \mathrm{log1mexp}(\log P_l))
          \quad (5)

        \mathcal{L}_{OR} = -\log \sigma(\log \mathrm{OR}_\theta) \quad (7)

    P is the length-normalised sequence probability of Eq. 3: pass MEAN log-probs
    (``sequence_logprobs(..., reduction="mean")``). Computed in float32 (float64 for float64
    input) whatever the input dtype; values and gradients are finite at log P = 0 exactly
    (see :func:`log1mexp`) and at log P = -50.

    Args:
        chosen_logps: (B,) mean log-probs of the chosen responses y_w, <= 0.
        rejected_logps: (B,) mean log-probs of the rejected responses y_l, <= 0.

    Returns:
        ``(loss, log_odds)``: per-example L_OR and log odds ratio, both (B,). The log odds ratio
        is the quantity itself, not its log-sigmoid (which is -loss).

    Example: P_w = 1/2, P_l = 1/4: odds_w = 1, odds_l = (1/4)/(3/4) = 1/3, so log OR = ln 3 =
    1.0986 and L_OR = -log(3/4) = ln(4/3) = 0.2877.

    >>> chosen, rejected = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # (B,)
    >>> loss, log_odds = odds_ratio_loss(chosen, rejected)
    >>> round(log_odds.item(), 4), round(loss.item(), 4)
    (1.0986, 0.2877)
    """
    _check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    chosen = _upcast(chosen_logps)  # (B,)
    rejected = _upcast(rejected_logps)  # (B,)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))  # (B,)
    return -F.logsigmoid(log_odds), log_odds


def orpo_loss(
    nll: Tensor,
    chosen_logps: Tensor,
    rejected_logps: Tensor,
    orpo_lambda: float,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The ORPO objective: SFT loss plus lambda times the mean odds-ratio loss (Eqs. 6-7).

    .. math:: \mathcal{L}_{ORPO} = \mathbb{E}_{(x, y_w, y_l)}
        [\mathcal{L}_{SFT} + \lambda \cdot \mathcal{L}_{OR}]

    With orpo_lambda = 0 the result is exactly ``nll``.

    Args:
        nll: scalar L_SFT on the chosen responses (:func:`sft_loss`, or a window-normalised
            :func:`token_nll`).
        chosen_logps: (B,) mean log-probs of the chosen responses.
        rejected_logps: (B,) mean log-probs of the rejected responses.
        orpo_lambda: lambda, the weight of L_OR (paper: 0.1 to 1.0).

    Returns:
        ``(loss, or_loss, log_odds)``: scalar loss, per-example L_OR (B,), log odds ratio (B,).

    Example: L_SFT = 2, one pair with L_OR = ln(4/3) (see :func:`odds_ratio_loss`) and one
    with P_w = P_l (log OR = 0, L_OR = ln 2): mean L_OR = (0.2877 + 0.6931) / 2 = 0.4904, and
    with lambda = 0.1 the loss is 2 + 0.04904 = 2.0490.

    >>> chosen = torch.tensor([math.log(0.5), -1.0])
    >>> rejected = torch.tensor([math.log(0.25), -1.0])
    >>> loss, or_loss, log_odds = orpo_loss(torch.tensor(2.0), chosen, rejected, orpo_lambda=0.1)
    >>> round(loss.item(), 4), [round(v, 4) for v in or_loss.tolist()]
    (2.049, [0.2877, 0.6931])
    """
    or_loss, log_odds = odds_ratio_loss(chosen_logps, rejected_logps)  # (B,) each
    loss = nll + orpo_lambda * or_loss.mean()
    return loss, or_loss, log_odds


def _dpo_logits(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> tuple[Tensor, Tensor]:
    """Log-ratios policy/reference for chosen and rejected, (B,) each, float32 or wider."""
    _check_same_shape(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )
    # The reference is frozen by definition: detach so a caller that forgot no_grad cannot
    # train it through the loss.
    chosen = _upcast(policy_chosen) - _upcast(ref_chosen).detach()  # (B,)
    rejected = _upcast(policy_rejected) - _upcast(ref_rejected).detach()  # (B,)
    return chosen, rejected


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> Tensor:
    r"""Per-example sigmoid DPO loss (DPO paper Eq. 7).

    .. math:: \mathcal{L}_{DPO} = -\log \sigma\Big(\beta \big[
        (\log \pi_\theta(y_w|x) - \log \pi_{ref}(y_w|x))
        - (\log \pi_\theta(y_l|x) - \log \pi_{ref}(y_l|x)) \big]\Big)

    Inputs are SUMMED response log-probs (``sequence_logprobs(..., reduction="sum")``); the
    reference log-probs are detached. With policy == reference every example gives ln 2.

    Args:
        policy_chosen, policy_rejected: (B,) policy log-probs of y_w and y_l.
        ref_chosen, ref_rejected: (B,) reference (SFT checkpoint) log-probs of y_w and y_l.
        beta: DPO's beta (paper: 0.1).

    Returns:
        (B,) float32 (float64 for float64 input).

    Example: pi_w = -10, ref_w = -12 (log-ratio +2); pi_l = -20, ref_l = -18 (log-ratio -2);
    beta = 0.1: beta * (2 - (-2)) = 0.4, loss = log(1 + e^-0.4) = log(1.6703) = 0.5130.

    >>> t = torch.tensor
    >>> round(dpo_loss(t([-10.0]), t([-20.0]), t([-12.0]), t([-18.0]), beta=0.1).item(), 4)
    0.513
    """
    chosen, rejected = _dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return -F.logsigmoid(beta * (chosen - rejected))  # (B,)


def dpo_rewards(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor]:
    r"""DPO's implicit rewards r = beta * (log pi_theta(y|x) - log pi_ref(y|x)), detached.

    For metrics only: reward margin = mean(r_w - r_l), reward accuracy = mean(r_w > r_l).

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: (B,) SUMMED log-probs.
        beta: DPO's beta.

    Returns:
        ``(chosen_rewards, rejected_rewards)``, (B,) each, without gradient.

    Example: the :func:`dpo_loss` example gives r_w = 0.1 * 2 = 0.2 and r_l = 0.1 * -2 = -0.2.

    >>> t = torch.tensor
    >>> r_w, r_l = dpo_rewards(t([-10.0]), t([-20.0]), t([-12.0]), t([-18.0]), beta=0.1)
    >>> round(r_w.item(), 4), round(r_l.item(), 4)
    (0.2, -0.2)
    """
    chosen, rejected = _dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    return (beta * chosen).detach(), (beta * rejected).detach()


def bradley_terry_loss(reward_chosen: Tensor, reward_rejected: Tensor) -> Tensor:
    r"""Per-example Bradley-Terry reward-model loss (the paper's judge, Sec. 6.1).

    .. math:: \mathcal{L}_{BT} = -\log \sigma(r(x, y_w) - r(x, y_l))

    Args:
        reward_chosen: (B,) scalar-head rewards of the chosen responses.
        reward_rejected: (B,) rewards of the rejected responses.

    Returns:
        (B,) float32 (float64 for float64 input).

    Example: r_w = 2, r_l = 0: log(1 + e^-2) = log(1.1353) = 0.1269; equal rewards give ln 2.

    >>> loss = bradley_terry_loss(torch.tensor([2.0, 1.0]), torch.tensor([0.0, 1.0]))
    >>> [round(v, 4) for v in loss.tolist()]
    [0.1269, 0.6931]
    """
    _check_same_shape(reward_chosen=reward_chosen, reward_rejected=reward_rejected)
    return -F.logsigmoid(_upcast(reward_chosen) - _upcast(reward_rejected))  # (B,)


# ---------------------------------------------------------------------------- beyond the paper
# Methods the ORPO paper did not compare. Each docstring says which log-probs the lab
# feeds the function, the defaults of the paper and its reference code, and where TRL differs.


def simpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float, gamma: float) -> Tensor:
    r"""Per-example SimPO loss: length-normalised, reference-free reward with a margin (Eq. 6).

    .. math:: \mathcal{L}_{SimPO} = -\log \sigma\Big(\frac{\beta}{|y_w|} \log \pi_\theta(y_w|x)
        - \frac{\beta}{|y_l|} \log \pi_\theta(y_l|x) - \gamma\Big)

    The implicit reward is beta times the MEAN per-token log-prob, so pass mean response
    log-probs (``sequence_logprobs(..., reduction="mean")``, the ones the ORPO term uses).
    ``gamma`` is the target reward margin in reward units, as the paper writes it. Both reference
    implementations put the margin inside as gamma / beta instead: princeton-nlp/SimPO's
    ``simpo_loss`` (``gamma_beta_ratio`` since their update, ``gamma / beta`` before) and TRL's
    ``CPOTrainer(loss_type="simpo")`` (``simpo_gamma``, in reward units, divided by beta) compute
    ``-logsigmoid(beta * ((chosen - rejected) - gamma / beta))``: the same function, so a
    ratio-style config maps to ``gamma = gamma_beta_ratio * beta``. TRL averages log-probs for
    this loss type, as here. With gamma = 0 this is :func:`cpo_loss` on the same numbers (but CPO
    is fed SUMMED log-probs).

    Defaults (checked against the repository's training_configs/ history and README): beta 2.0
    (base) or 2.5 (instruct); gamma 1.6 (Mistral-Base), 0.3 (Mistral-Instruct), 1.0 (Llama3-Base),
    1.4 (Llama3-Instruct) in the preprint's configs, i.e. gamma / beta = 0.8, 0.12, 0.5, 0.56 (the
    README's later table: 0.8, 0.1, 0.5, 0.55); learning rates 3e-7, 5e-7, 6e-7, 1e-6; one epoch.
    It starts from an SFT model (zephyr-7b-sft-full, a Llama-3-8B SFT'd on UltraChat-200k) or an
    instruct model, never a raw base model. Later runs (v0.2 Llama3-Instruct, Gemma-2-9B-it) use
    beta 10 with gamma / beta 0.3 or 0.5; the README's advice is gamma / beta = 0.5 to start, tuned
    in [0, 1]. TRL's CPOConfig defaults (beta 0.1, simpo_gamma 0.5: gamma / beta = 5) are not
    SimPO's: set both. Label smoothing (default 0 in both implementations) is not implemented.

    Args:
        chosen_logps: (B,) mean log-probs of the chosen responses y_w.
        rejected_logps: (B,) mean log-probs of the rejected responses y_l.
        beta: SimPO's reward scale (paper: 2.0 to 2.5).
        gamma: target reward margin, reward units (paper: 0.3 to 1.6).

    Returns:
        (B,) float32 (float64 for float64 input).

    Raises:
        ValueError: if the two inputs differ in shape.

    Example: mean log-probs -1 and -2, beta = 2, gamma = 1: 2 * (-1 - (-2)) - 1 = 1, loss =
    log(1 + e^-1) = 0.3133. In TRL's form: 2 * ((1) - 1/2) = 1, the same.

    >>> round(simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0).item(), 4)
    0.3133
    """
    _check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    chosen = _upcast(chosen_logps)  # (B,)
    rejected = _upcast(rejected_logps)  # (B,)
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)  # (B,)


def cpo_loss(chosen_logps: Tensor, rejected_logps: Tensor, beta: float) -> Tensor:
    r"""Per-example CPO preference term L_prefer (CPO paper; TRL ``CPOTrainer``, "sigmoid").

    .. math:: \mathcal{L}_{prefer} = -\log \sigma\big(\beta \log \pi_\theta(y_w|x)
        - \beta \log \pi_\theta(y_l|x)\big)

    DPO's loss with the reference dropped, i.e. with a uniform reference whose log-probs cancel:
    ``cpo_loss(c, r, beta)`` equals ``dpo_loss(c, r, k, k, beta)`` for any k. Inputs are SUMMED
    response log-probs (``sequence_logprobs(..., reduction="sum")``): the CPO reference code
    (fe1ixxu/ALMA utils/cpo_trainer.py, ``average_log_prob=False``) sums, and so does TRL's
    CPOTrainer, which averages only for ``loss_type in ["ipo", "simpo"]``. The paper's objective
    is L_CPO = mean(L_prefer) + L_NLL, the token-mean NLL of the chosen response with weight 1
    (TRL: ``cpo_alpha``, default 1.0); as for ORPO, the training objective adds it, not this.

    Defaults (ALMA runs/cpo_ft.sh, the paper's ALMA-13B-R): beta 0.1; learning rate 1e-4 with
    LoRA, one epoch, weight decay 0.01, inverse-sqrt schedule, 1% warm-up. It starts from
    ALMA-13B-LoRA, a model already fine-tuned on human-written parallel data (an SFT model), not
    from a base model. TRL's CPOConfig defaults: beta 0.1, cpo_alpha 1.0, learning rate 1e-6.

    Args:
        chosen_logps: (B,) summed log-probs of the chosen responses y_w.
        rejected_logps: (B,) summed log-probs of the rejected responses y_l.
        beta: CPO's beta (paper: 0.1).

    Returns:
        (B,) float32 (float64 for float64 input).

    Raises:
        ValueError: if the two inputs differ in shape.

    Example: summed log-probs -12 and -17, beta = 0.1: 0.1 * 5 = 0.5, loss = log(1 + e^-0.5) =
    log(1.6065) = 0.4741.

    >>> round(cpo_loss(torch.tensor([-12.0]), torch.tensor([-17.0]), beta=0.1).item(), 4)
    0.4741
    """
    _check_same_shape(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    chosen = _upcast(chosen_logps)  # (B,)
    rejected = _upcast(rejected_logps)  # (B,)
    return -F.logsigmoid(beta * (chosen - rejected))  # (B,)


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    tau: float,
) -> Tensor:
    r"""Per-example IPO loss, the sampled IPO objective (IPO paper Eq. 17, Algorithm 1).

    .. math::
        h = \log \frac{\pi_\theta(y_w|x)\, \pi_{ref}(y_l|x)}{\pi_\theta(y_l|x)\, \pi_{ref}(y_w|x)}
          = (\log \pi_\theta(y_w|x) - \log \pi_{ref}(y_w|x))
          - (\log \pi_\theta(y_l|x) - \log \pi_{ref}(y_l|x))

        \mathcal{L}_{IPO} = \Big(h - \frac{1}{2\tau}\Big)^2

    A regression of h onto 1/(2 tau), with its minimum, 0, at h = 1/(2 tau): unlike DPO's loss it
    rises again past the target, which is how IPO stays near the reference without early
    stopping. The reference log-probs are detached.

    Which log-probs: the function takes whatever it is given; the lab feeds MEAN response
    log-probs (``reduction="mean"``) for policy and reference alike, so h is a per-token
    log-ratio and 1/(2 tau) a per-token margin whatever the length (summed, the same tau asks
    a 500-token response for the margin of a 5-token one). Paper and implementations disagree
    here. The paper writes pi(y|x), a sequence probability (summed log-probs), and the DPO
    reference code (eric-mitchell/direct-preference-optimization, ``ipo=True``) sums. TRL
    averages since PR #1265 (January 2024), after the IPO authors told Hugging Face that the
    paper's results used the normalised form (huggingface.co/blog/pref-tuning; questioned in TRL
    issue #1677, adopted by torchtune #1291); ContextualAI/HALOs averages too. TRL's DPOTrainer
    now divides each log-ratio by its own response's token count, which is mean policy minus
    mean reference log-probs over the same mask, i.e. this function on ``reduction="mean"``.
    A cached summed reference log-prob must be divided by the same token count first.

    Defaults: the paper gives no LLM recipe (its experiments are small illustrative bandit
    problems). TRL takes tau as ``beta`` (DPOConfig and CPOConfig default 0.1); HALOs uses
    tau = 0.1. Like DPO it starts from an SFT model, which is also the reference.

    Args:
        policy_chosen, policy_rejected: (B,) policy log-probs of y_w and y_l.
        ref_chosen, ref_rejected: (B,) reference (SFT checkpoint) log-probs of y_w and y_l.
        tau: IPO's regularisation strength, > 0; the target margin is 1/(2 tau).

    Returns:
        (B,) float32 (float64 for float64 input).

    Raises:
        ValueError: on shapes that do not match, or tau <= 0.

    Example: pi_w = -1, ref_w = -1.5 (log-ratio +0.5); pi_l = -2, ref_l = -1.5 (log-ratio
    -0.5): h = 1. tau = 0.5: target 1/(2 * 0.5) = 1, loss 0. tau = 0.1: target 5,
    loss (1 - 5)^2 = 16.

    >>> t = torch.tensor
    >>> [ipo_loss(t([-1.0]), t([-2.0]), t([-1.5]), t([-1.5]), tau=v).item() for v in (0.5, 0.1)]
    [0.0, 16.0]
    """
    if not tau > 0:
        raise ValueError(f"tau must be > 0 (the target margin is 1/(2 tau)), got {tau!r}")
    chosen, rejected = _dpo_logits(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    h = chosen - rejected  # (B,)
    return (h - 1.0 / (2.0 * tau)) ** 2  # (B,)
