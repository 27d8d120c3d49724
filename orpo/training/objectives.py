"""Per-stage objectives: one forward pass over a micro-batch -> loss contribution and stats.

Every objective returns the micro-batch's share of the WINDOW loss: summed NLL divided by the
token count of the whole accumulation window (across all ranks), summed per-example terms divided
by the window's example count. Adding the shares of every micro-batch on every rank gives exactly
the loss of the full batch, so gradient accumulation and data parallelism change nothing
(TRL #2628 reported losses wrong under accumulation by averaging per-micro-batch means).

Stats are detached sums ("nll" over tokens, the rest over examples); the loop adds them up over
the window and divides by the same totals to log means. Names follow the metric catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from orpo import losses
from orpo.config import NllScope, Stage
from orpo.losses import (
    TokenLogprobs,
    bradley_terry_loss,
    dpo_loss,
    dpo_rewards,
    odds_ratio_loss,
    scored_positions,
    token_logprobs,
    token_nll,
)

Forward = Callable[..., object]


@dataclass(frozen=True)
class Norms:
    """Totals of the accumulation window over all ranks."""

    tokens: float  # tokens the NLL is averaged over
    examples: float  # pairs (or texts, for pretraining)


@dataclass(frozen=True)
class ObjectiveConfig:
    stage: Stage
    nll_scope: NllScope = "response"  # "full" also trains on prompt tokens (TRL's choice)
    orpo_lambda: float | None = None
    dpo_beta: float | None = None
    params: dict[str, float] = field(default_factory=dict)  # SimPO's beta, gamma; CPO's ...
    # The model returns logits only where a counted token is predicted (`orpo.models.
    # narrows_logits` says whether it can): the prompt and padding positions are neither
    # projected onto the vocabulary nor normalised. Same losses; at a 49k vocabulary the
    # (rows, T, V) logits are the largest tensors of the step.
    narrow_logits: bool = False


def nll_mask(batch: dict[str, Tensor], rows: slice, scope: str) -> tuple[Tensor, Tensor]:
    """(labels, mask) of the tokens the NLL covers, for the given rows."""
    if scope == "full":  # prompt tokens count too: labels must not hold -100 there
        return batch["input_ids"][rows], batch["attention_mask"][rows]
    return batch["labels"][rows], batch["response_mask"][rows]


# Stages with an NLL term: on every row (sft, pretrain) or on the chosen half of the pairs.
NLL_STAGES = ("sft", "pretrain", "orpo", "cpo")


def nll_tokens(batch: dict[str, Tensor], stage: str, scope: str) -> int:
    """Tokens the NLL of this micro-batch averages over (known before the forward pass)."""
    if stage not in NLL_STAGES:
        return 0
    rows = slice(0, _n_pairs(batch) if stage in ("orpo", "cpo") else len(batch["input_ids"]))
    _, mask = nll_mask(batch, rows, "full" if stage == "pretrain" else scope)
    return int(mask[:, 1:].sum())  # the first token is never predicted


def n_examples(batch: dict[str, Tensor], stage: str) -> int:
    return len(batch["input_ids"]) if stage in ("sft", "pretrain") else _n_pairs(batch)


def _n_pairs(batch: dict[str, Tensor]) -> int:
    return len(batch["input_ids"]) // 2  # rows: B chosen, then B rejected


class Pair(NamedTuple):
    """Per-pair values of a pair batch, split once: chosen (B, ...) and rejected (B, ...)."""

    chosen: Tensor
    rejected: Tensor

    @classmethod
    def of(cls, rows: Tensor) -> Pair:
        """Rows of a pair batch (2B, ...) as the collate lays them out: B chosen, then B
        rejected (one forward pass over both)."""
        b = len(rows) // 2
        return cls(rows[:b], rows[b:])

    def detached_sums(self, name: str) -> dict[str, Tensor]:
        """`<name>_chosen` and `<name>_rejected` summed over the pairs, for the stats."""
        return {
            f"{name}_chosen": self.chosen.detach().sum(),
            f"{name}_rejected": self.rejected.detach().sum(),
        }


def _model_inputs(batch: dict[str, Tensor]) -> dict:
    # use_cache=False: a Hugging Face causal LM otherwise copies every layer's keys and values
    # into a cache (its config's default) that nothing here reads; TRL's trainers pass it too.
    return {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "use_cache": False,
    }


def _logits(forward: Forward, batch, labels: Tensor, mask: Tensor, narrow: bool) -> Tensor:
    """One forward pass: (rows, T, V) logits, or with `narrow` the (N, V) logits of the N
    positions that predict a token counted under (labels, mask), which `token_logprobs` reads
    as they are (transformers' `logits_to_keep` given as a bool mask)."""
    inputs = _model_inputs(batch)
    if narrow:
        inputs["logits_to_keep"] = scored_positions(labels, mask)
    return forward(**inputs).logits


def _response_forward(forward: Forward, batch, narrow: bool) -> tuple[Tensor, TokenLogprobs]:
    """Logits and next-token log-probs of every row's response: the one log-softmax of this
    forward pass that the pair log-probs and the response-scoped NLL all read."""
    labels, mask = batch["labels"], batch["response_mask"]
    logits = _logits(forward, batch, labels, mask, narrow)
    return logits, token_logprobs(logits, labels, mask)


def _narrow(cfg: ObjectiveConfig) -> bool:
    """Narrow logits for an objective with an NLL term: only when the NLL covers the response
    alone; over prompt and response it needs the prompt positions' logits as well."""
    return cfg.narrow_logits and cfg.nll_scope == "response"


def _pair_logps(tokens: TokenLogprobs) -> tuple[Pair, Pair]:
    """Summed and mean response log-probs of chosen and rejected, each (B,)."""
    summed = tokens.sequence("sum")  # (2B,)
    mean = tokens.sequence("mean")  # raises on an empty response
    return Pair.of(summed), Pair.of(mean)


def _nll(logits: Tensor, tokens: TokenLogprobs, batch, rows: slice, scope: str) -> Tensor:
    """Summed NLL of the given rows: read from the response log-probs when it covers the
    response only (the default), else one more log-softmax over prompt and response."""
    if scope == "response":
        return tokens.rows(rows).nll()[0]
    labels, mask = nll_mask(batch, rows, scope)
    return token_nll(logits[rows], labels, mask)[0]


def lm_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """SFT (chosen rows) and pretraining (plain texts): token-level NLL."""
    if cfg.stage == "pretrain":  # plain texts: every token counts, no response to score
        labels, mask = nll_mask(batch, slice(None), "full")
        nll_sum, _ = token_nll(
            _logits(forward, batch, labels, mask, cfg.narrow_logits), labels, mask
        )
        stats = {}
    else:
        logits, tokens = _response_forward(forward, batch, _narrow(cfg))  # (B, T, V) or (N, V)
        nll_sum = _nll(logits, tokens, batch, slice(None), cfg.nll_scope)
        stats = {"logp_chosen": tokens.sequence("mean").detach().sum()}
    loss = nll_sum / norms.tokens
    return loss, {"loss": loss.detach(), "nll": nll_sum.detach(), **stats}


def orpo_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """L_ORPO = L_SFT + orpo_lambda * L_OR over one forward pass of chosen+rejected (2B rows)."""
    logits, tokens = _response_forward(forward, batch, _narrow(cfg))  # (2B, T, V) or (N, V)
    nll_sum = _nll(logits, tokens, batch, slice(0, _n_pairs(batch)), cfg.nll_scope)
    _, mean = _pair_logps(tokens)
    or_loss, log_odds = odds_ratio_loss(mean.chosen, mean.rejected)  # (B,), (B,)
    loss = nll_sum / norms.tokens + cfg.orpo_lambda * or_loss.sum() / norms.examples
    stats = {
        "loss": loss.detach(),
        "nll": nll_sum.detach(),
        "or_loss": or_loss.detach().sum(),
        "log_odds_ratio": log_odds.detach().sum(),
        **mean.detached_sums("logp"),
    }
    return loss, stats


def dpo_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """Sigmoid DPO on summed log-probs; `ref` holds the cached reference log-probs (B, 2)."""
    _, tokens = _response_forward(forward, batch, cfg.narrow_logits)
    summed, mean = _pair_logps(tokens)
    ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]  # (B,)
    per_pair = dpo_loss(summed.chosen, summed.rejected, ref_chosen, ref_rejected, cfg.dpo_beta)
    loss = per_pair.sum() / norms.examples
    r_chosen, r_rejected = dpo_rewards(
        summed.chosen, summed.rejected, ref_chosen, ref_rejected, cfg.dpo_beta
    )
    return loss, _preference_stats(loss, mean, r_chosen - r_rejected)


def simpo_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """SimPO: -log sigmoid(beta * (mean logp_w - mean logp_l) - gamma), no reference."""
    _, mean = _pair_logps(_response_forward(forward, batch, cfg.narrow_logits)[1])
    beta, gamma = cfg.params["beta"], cfg.params["gamma"]
    per_pair = losses.simpo_loss(mean.chosen, mean.rejected, beta, gamma)  # (B,)
    loss = per_pair.sum() / norms.examples
    margin = beta * (mean.chosen - mean.rejected)  # SimPO's reward margin
    return loss, _preference_stats(loss, mean, margin)


def cpo_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """CPO: NLL of the chosen response + the reference-free DPO term on summed log-probs."""
    logits, tokens = _response_forward(forward, batch, _narrow(cfg))  # (2B, T, V) or (N, V)
    nll_sum = _nll(logits, tokens, batch, slice(0, _n_pairs(batch)), cfg.nll_scope)
    summed, mean = _pair_logps(tokens)
    prefer = losses.cpo_loss(summed.chosen, summed.rejected, cfg.params["beta"])  # (B,)
    loss = nll_sum / norms.tokens + prefer.sum() / norms.examples
    margin = cfg.params["beta"] * (summed.chosen - summed.rejected)
    return loss, {**_preference_stats(loss, mean, margin), "nll": nll_sum.detach()}


def ipo_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """IPO on MEAN response log-probs (per-token log-ratios, as TRL and the IPO authors' own
    runs; see `orpo.losses.ipo_loss`); `ref` holds the cached SUMMED reference log-probs
    (B, 2), divided here by the same response token counts."""
    _, mean = _pair_logps(_response_forward(forward, batch, cfg.narrow_logits)[1])
    n_tokens = Pair.of(response_tokens(batch).to(ref.dtype))
    ref_mean = Pair(ref[:, 0] / n_tokens.chosen, ref[:, 1] / n_tokens.rejected)  # (B,) each
    per_pair = losses.ipo_loss(
        mean.chosen, mean.rejected, ref_mean.chosen, ref_mean.rejected, cfg.params["tau"]
    )
    loss = per_pair.sum() / norms.examples
    margin = (mean.chosen - ref_mean.chosen) - (mean.rejected - ref_mean.rejected)  # IPO's h
    return loss, _preference_stats(loss, mean, margin)


def _preference_stats(loss: Tensor, mean_logps: Pair, margin: Tensor) -> dict[str, Tensor]:
    """The stats every pairwise method logs: its loss, the mean log-probs of chosen and
    rejected, and its own reward margin per pair (B,) and how often it is positive."""
    margin = margin.detach()
    return {
        "loss": loss.detach(),
        **mean_logps.detached_sums("logp"),
        "reward_margin": margin.sum(),
        "reward_accuracy": (margin > 0).float().sum(),
    }


def response_tokens(batch: dict[str, Tensor]) -> Tensor:
    """(rows,) tokens each row's response log-prob sums over: what `sequence_logprobs` counts
    (after the shift, masked, label not -100)."""
    counted = batch["response_mask"][:, 1:].bool() & (batch["labels"][:, 1:] != -100)
    return counted.sum(-1)


def rm_objective(forward: Forward, batch, norms: Norms, cfg: ObjectiveConfig, ref=None):
    """Bradley-Terry reward model: scalar head on prompt+response, -log sigmoid(r_w - r_l)."""
    rewards = Pair.of(forward(**_model_inputs(batch)).logits.squeeze(-1).float())  # (B,) each
    per_pair = bradley_terry_loss(rewards.chosen, rewards.rejected)  # (B,)
    loss = per_pair.sum() / norms.examples
    margin = (rewards.chosen - rewards.rejected).detach()
    stats = {
        "loss": loss.detach(),
        "reward_margin": margin.sum(),
        "reward_accuracy": (margin > 0).float().sum(),
    }
    return loss, stats


OBJECTIVES = {
    "pretrain": lm_objective,
    "sft": lm_objective,
    "orpo": orpo_objective,
    "dpo": dpo_objective,
    "simpo": simpo_objective,
    "cpo": cpo_objective,
    "ipo": ipo_objective,
    "rm": rm_objective,
}


@torch.no_grad()
def pair_logps(forward: Forward, batch, narrow_logits: bool = False) -> tuple[Tensor, Tensor]:
    """(summed, mean) response log-probs of chosen and rejected, each (B, 2): the DPO reference
    cache and the report's log odds / log probability ratio distributions use it.
    `narrow_logits` as in `ObjectiveConfig`."""
    summed, mean = _pair_logps(_response_forward(forward, batch, narrow_logits)[1])
    return torch.stack(summed, 1), torch.stack(mean, 1)
