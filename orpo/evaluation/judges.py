"""Judges: anything that gives one scalar reward per (example, response).

- `OracleJudge`: the synthetic suite's programmatic reward (`oracle_reward`), the ground truth.
- `RewardModelJudge`: a sequence classifier with one output, either our Bradley-Terry `rm` cell
  (the paper's judge) or any Hugging Face reward model by hub id or local path. Our rm cell
  reads prompt + response exactly as it was trained: `encode_pair` (the lab's prompt rendering,
  BOS, left-cut prompt, right-cut response ending in EOS), right-padded with the model's pad id,
  so the classifier scores the EOS position. An external reward model was trained on its own
  chat format: when its tokenizer has a chat template, the whole conversation (prompt turns and
  the response as the assistant's turn) is rendered by that template instead (`input_format`
  says which was used; the report shows it).

How far to trust a judge:
- `agreement`: accuracy at scoring the chosen response above the rejected one on held-out
  preference pairs (a tie counts 0.5; 0.5 is chance).
- `oracle_agreement` (synthetic data): over pairs of responses to the same prompt that the
  oracle ranks strictly, the share the judge orders the same way (tie 0.5). Run on the policies'
  own generations this says whether the judge can be trusted on the responses it judges.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from orpo.data.schema import PreferenceExample
from orpo.data.synthetic import oracle_reward
from orpo.data.tokenize import EncodedPair, chat_format, collate_chosen, encode_pair

ORACLE = "oracle"
REWARD_MODEL = "reward-model"


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, examples: list[PreferenceExample], responses: list[str]) -> np.ndarray:
        """Rewards (N,) float64 of responses[i] to examples[i]; higher is better."""
        ...


class OracleJudge:
    """The synthetic suite's oracle: 1.0 exactly right, at most 0.9 for anything else."""

    name = ORACLE
    input_format = "the response text (programmatic)"

    def score(self, examples: list[PreferenceExample], responses: list[str]) -> np.ndarray:
        _check_lengths(examples, responses)
        return np.array(
            [oracle_reward(ex.metadata, r) for ex, r in zip(examples, responses, strict=True)]
        )


class RewardModelJudge:
    """A one-output sequence classifier scoring prompt + response (our `rm` cell, or any HF
    reward model). `name` is "reward-model:<label>", label defaulting to the rm cell's id when
    `model_dir` is a cell's `model/` folder, else the path or hub id as given."""

    def __init__(
        self,
        model_dir: str | Path,
        batch_size: int = 32,
        *,
        max_length: int = 1024,
        max_prompt_length: int = 512,
        label: str | None = None,
        trust_remote_code: bool = False,
        external: bool = False,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        from orpo.models import load_model, load_tokenizer

        self.tokenizer = load_tokenizer(str(model_dir), trust_remote_code=trust_remote_code)
        self.model = load_model(
            model_dir, kind="reward", trust_remote_code=trust_remote_code, dtype=dtype
        ).to(device)
        self.device = torch.device(device)
        self.use_chat_template = external and bool(getattr(self.tokenizer, "chat_template", None))
        if self.use_chat_template:
            self.input_format = "the reward model's chat template"
        elif external:
            self.input_format = f"{chat_format(self.tokenizer)} (the reward model has none)"
        else:
            self.input_format = f"{chat_format(self.tokenizer)} (as the rm cell was trained)"
        if len(self.tokenizer) > self.model.get_input_embeddings().num_embeddings:
            self.model.resize_token_embeddings(len(self.tokenizer))  # a pad token was added
        # The classifier pools the last token that is not config.pad_token_id: it must be ours.
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        self.batch_size = batch_size
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.name = f"{REWARD_MODEL}:{label or model_label(model_dir)}"

    @torch.no_grad()
    def score(self, examples: list[PreferenceExample], responses: list[str]) -> np.ndarray:
        _check_lengths(examples, responses)
        rewards = np.full(len(examples), np.nan)
        for start in range(0, len(examples), self.batch_size):
            pairs, rows = [], []
            for i in range(start, min(start + self.batch_size, len(examples))):
                pair = self._encode(examples[i], responses[i])
                if pair is not None:  # None: the prompt leaves no room; the reward stays NaN
                    pairs.append(pair)
                    rows.append(i)
            if not pairs:
                continue
            batch = collate_chosen(pairs, self.tokenizer.pad_token_id)
            logits = self.model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
                use_cache=False,
            ).logits  # (B, 1)
            rewards[rows] = logits[:, 0].float().cpu().numpy()
        return rewards

    def _encode(self, example: PreferenceExample, response: str) -> EncodedPair | None:
        if not self.use_chat_template:
            # The response goes in as "chosen": collate_chosen builds the training rows.
            as_pair = PreferenceExample(example.id, example.prompt, response, response)
            return encode_pair(self.tokenizer, as_pair, self.max_length, self.max_prompt_length)
        conversation = [*example.prompt, {"role": "assistant", "content": response}]
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
        ids = self.tokenizer.encode(text, add_special_tokens=False)[-self.max_length :]
        # The whole rendered conversation is one row: collate_chosen needs a (prompt, response)
        # split only for its masks, which scoring does not read.
        return EncodedPair(ids[:1], ids[1:], ids[1:], example.id) if len(ids) > 1 else None


def model_label(model_dir: str | Path) -> str:
    """The rm cell's id for `runs/<exp>/cells/<cell_id>/model`, else the path or hub id."""
    path = Path(model_dir)
    if path.name == "model" and path.parent.parent.name == "cells":
        return path.parent.name
    return str(model_dir)


def _check_lengths(examples: Sequence, responses: Sequence) -> None:
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")


def load_judge(
    spec: str,
    rm_model_dir: str | Path | None = None,
    *,
    batch_size: int = 32,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Judge:
    """'oracle' | 'reward-model' (the rm cell at `rm_model_dir`) | a hub id or local path of a
    sequence-classification reward model (read in its own chat format)."""
    if spec == ORACLE:
        return OracleJudge()
    lengths = dict(
        batch_size=batch_size,
        max_length=max_length,
        max_prompt_length=max_prompt_length,
        device=device,
        dtype=dtype,
    )
    if spec == REWARD_MODEL:
        if rm_model_dir is None:
            raise ValueError("judge 'reward-model' needs rm_model_dir (the rm cell's model/)")
        if not Path(rm_model_dir).is_dir():
            raise FileNotFoundError(
                f"reward model folder {rm_model_dir} does not exist (train the rm cell first)"
            )
        return RewardModelJudge(rm_model_dir, **lengths)
    return RewardModelJudge(spec, label=spec, external=True, **lengths)


def judge_slug(name: str) -> str:
    """A judge name as a file name: "reward-model:rm-opt-small-s0" -> "reward-model_rm-opt-small-s0"."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "judge"


# --- how far to trust a judge -----------------------------------------------------------------


def preference_accuracy(chosen: np.ndarray, rejected: np.ndarray) -> float:
    """Mean of 1 (chosen scored higher), 0.5 (tie), 0 (lower); NaN rewards are left out."""
    chosen, rejected = np.asarray(chosen, float), np.asarray(rejected, float)
    keep = ~(np.isnan(chosen) | np.isnan(rejected))
    if not keep.any():
        return float("nan")
    c, r = chosen[keep], rejected[keep]
    return float(np.mean(np.where(c > r, 1.0, np.where(c == r, 0.5, 0.0))))


def agreement(judge: Judge, pairs: list[PreferenceExample]) -> float:
    """Accuracy at scoring chosen above rejected on held-out pairs (a tie counts 0.5)."""
    if not pairs:
        raise ValueError("agreement needs at least one preference pair")
    chosen = judge.score(pairs, [p.chosen for p in pairs])
    rejected = judge.score(pairs, [p.rejected for p in pairs])
    return preference_accuracy(chosen, rejected)


def ordering_agreement(
    judge_rewards: Sequence[np.ndarray], oracle_rewards: Sequence[np.ndarray]
) -> tuple[float, int]:
    """(agreement, pairs counted) over every pair i < j of responses within each group (one
    group per prompt) that the oracle ranks strictly: 1 if the judge orders it the same way,
    0.5 for a judge tie, 0 otherwise. NaN rewards drop their responses."""
    outcomes_sum, n_pairs = 0.0, 0
    for judged, truth in zip(judge_rewards, oracle_rewards, strict=True):
        judged, truth = np.asarray(judged, float), np.asarray(truth, float)
        keep = ~(np.isnan(judged) | np.isnan(truth))
        judged, truth = judged[keep], truth[keep]
        i, j = np.triu_indices(len(truth), k=1)  # every unordered pair, (M,) each
        strict = truth[i] != truth[j]
        d_truth = np.sign(truth[i] - truth[j])[strict]  # (M',)
        d_judge = np.sign(judged[i] - judged[j])[strict]  # (M',)
        outcomes_sum += float(np.sum(np.where(d_judge == 0, 0.5, d_judge == d_truth)))
        n_pairs += int(strict.sum())
    return (outcomes_sum / n_pairs if n_pairs else float("nan")), n_pairs


def oracle_agreement(
    judge: Judge, examples: list[PreferenceExample], responses: list[list[str]]
) -> float:
    """Synthetic data: share of response pairs (same example, oracle not tied) that `judge`
    orders like the oracle; responses[i] are candidate answers to examples[i]."""
    oracle = OracleJudge()
    judged, truth = [], []
    for example, candidates in zip(examples, responses, strict=True):
        repeated = [example] * len(candidates)
        judged.append(judge.score(repeated, list(candidates)))
        truth.append(oracle.score(repeated, list(candidates)))
    return ordering_agreement(judged, truth)[0]
