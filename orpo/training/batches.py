"""Which examples each rank sees at each step: a pure function of (seed, step), so a resumed
cell continues with exactly the batches it would have seen, and 1 or N processes see the same
global batch."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from orpo.data.schema import read_jsonl
from orpo.data.tokenize import (
    EncodedPair,
    TruncationStats,
    collate_chosen,
    collate_pairs,
    collate_texts,
    encode_pairs,
)


@dataclass
class StageData:
    """Tokenised train/eval items of one stage and how to batch them."""

    train: list
    eval: list
    collate: Callable[[list], dict[str, torch.Tensor]]
    truncation: dict[str, TruncationStats] = field(default_factory=dict)
    # SFT trains on chosen rows only; its eval also needs rejected log-probs (paper Fig. 3)
    pair_collate: Callable[[list], dict[str, torch.Tensor]] | None = None

    def batch(self, items: list, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = self.collate([items[i] for i in indices])
        batch["indices"] = torch.tensor(indices, dtype=torch.long)
        return batch


def _texts(pairs: list[EncodedPair]) -> list[list[int]]:
    """Pretraining reads every prompt+response as plain domain text, chosen and rejected alike."""
    return [p.prompt_ids + r for p in pairs for r in (p.chosen_ids, p.rejected_ids)]


def load_stage_data(
    stage: str, data_dir: str | Path, tokenizer, max_length: int, max_prompt_length: int
) -> StageData:
    data_dir = Path(data_dir)
    encoded, stats = {}, {}
    for split in ("train", "eval"):
        examples = read_jsonl(data_dir / f"{split}.jsonl")
        encoded[split], stats[split] = encode_pairs(
            tokenizer, examples, max_length, max_prompt_length
        )
        if not encoded[split]:
            raise ValueError(
                f"{data_dir / f'{split}.jsonl'}: no pair fits max_length={max_length}"
                f" with max_prompt_length={max_prompt_length}"
                f" ({stats[split].summary()}); raise data.max_length or lower"
                " data.max_prompt_length"
            )
    pad = tokenizer.pad_token_id
    if stage == "pretrain":
        return StageData(
            _texts(encoded["train"]),
            _texts(encoded["eval"]),
            lambda items: collate_texts(items, pad),
            stats,
        )
    if stage == "sft":
        return StageData(
            encoded["train"],
            encoded["eval"],
            lambda items: collate_chosen(items, pad),
            stats,
            pair_collate=lambda items: collate_pairs(items, pad),
        )
    return StageData(
        encoded["train"], encoded["eval"], lambda items: collate_pairs(items, pad), stats
    )


def total_steps(n_items: int, epochs: float, global_batch: int, max_steps: int | None) -> int:
    steps = max(1, math.ceil(n_items * epochs / global_batch))
    return min(steps, max_steps) if max_steps else steps


class Schedule:
    """Epoch-wise shuffled stream of example indices, cut into windows of
    batch_size * grad_accum * world_size; rank r takes micro-batch m's slice r."""

    def __init__(self, n_items: int, batch_size: int, grad_accum: int, world_size: int, seed: int):
        self.n, self.batch_size, self.grad_accum = n_items, batch_size, grad_accum
        self.world_size, self.seed = world_size, seed
        self._perms: dict[int, list[int]] = {}

    def _item(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        if epoch not in self._perms:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perms[epoch] = torch.randperm(self.n, generator=gen).tolist()
        return self._perms[epoch][offset]

    def window(self, step: int, rank: int) -> list[list[int]]:
        """The micro-batches (lists of item indices) rank `rank` runs at optimizer step `step`."""
        b, w = self.batch_size, self.world_size
        start = step * b * self.grad_accum * w
        out = []
        for micro in range(self.grad_accum):
            first = start + (micro * w + rank) * b
            out.append([self._item(p) for p in range(first, first + b)])
        return out


def shard_batches(
    n_items: int, batch_size: int, rank: int, world_size: int
) -> list[tuple[list[int], float]]:
    """Evaluation batches of this rank: (indices, weight). Every rank gets the same number of
    batches (ZeRO-3 forward passes are collective); a rank short of data repeats its first
    batch with weight 0."""
    mine = list(range(rank, n_items, world_size))
    per_rank = math.ceil(math.ceil(n_items / world_size) / batch_size)
    batches = []
    for i in range(per_rank):
        chunk = mine[i * batch_size : (i + 1) * batch_size]
        batches.append((chunk, 1.0) if chunk else (mine[:batch_size] or [0], 0.0))
    return batches
