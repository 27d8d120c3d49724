"""Log odds ratio vs log probability ratio of held-out pairs under a trained policy (paper
Sec. 7.1), from the model's own length-normalised response log-probs (Eq. 3):

    log_prob_ratio = logp_w - logp_l
    log_odds_ratio = (logp_w - logp_l) - (log1mexp(logp_w) - log1mexp(logp_l))

Log-probs come from `orpo.training.objectives.pair_logps` (the helper DPO's reference cache
uses) and the log odds ratio from `orpo.losses.odds_ratio_loss` (which applies `log1mexp`), so
the numbers are the ones the ORPO loss sees in training.
"""

from __future__ import annotations

import torch

from orpo.data.schema import PreferenceExample
from orpo.data.tokenize import collate_pairs, encode_pairs
from orpo.losses import odds_ratio_loss
from orpo.models import narrows_logits
from orpo.training.objectives import pair_logps


def model_log_ratio_rows(
    model: torch.nn.Module,
    tokenizer,
    pairs: list[PreferenceExample],
    max_length: int,
    max_prompt_length: int,
    batch_size: int = 32,
) -> list[dict]:
    """`log_ratio_rows` for a model already in memory."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    narrow = narrows_logits(model)
    encoded, _ = encode_pairs(tokenizer, pairs, max_length, max_prompt_length)
    rows = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            batch = collate_pairs(chunk, tokenizer.pad_token_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            _, mean = pair_logps(model, batch, narrow)  # (B, 2): chosen, rejected
            chosen, rejected = mean[:, 0].double().cpu(), mean[:, 1].double().cpu()  # (B,)
            _, log_odds = odds_ratio_loss(chosen, rejected)  # (B,)
            for pair, w, lo, odds in zip(
                chunk, chosen.tolist(), rejected.tolist(), log_odds.tolist(), strict=True
            ):
                rows.append(
                    {
                        "pair_id": pair.example_id,
                        "logp_chosen": w,
                        "logp_rejected": lo,
                        "log_prob_ratio": w - lo,
                        "log_odds_ratio": odds,
                    }
                )
    model.train(was_training)
    return rows
