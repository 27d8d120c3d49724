"""Preference pairs -> token ids -> one padded batch holding chosen and rejected together.

Chat formatting
    `format_prompt` uses the tokenizer's own chat template when it has one (with the generation
    prompt appended); otherwise `SIMPLE_CHAT_TEMPLATE`: every message as "<|{role}|>\\n{content}\\n",
    then "<|assistant|>\\n". With the simple template a BOS token id (if the tokenizer has one) is
    put in front of the prompt; a real chat template places its own BOS in the text.

Sequences
    prompt_ids + response_ids, where each response is its text's tokens followed by
    `eos_token_id`. EOS is a trained label: it is how the model learns to stop (this is why the
    pad token must not be the EOS token).

Truncation policy (counted in `TruncationStats`, one count per pair)
    1. A prompt longer than `max_prompt_length` is truncated from the LEFT: the latest turns and
       the generation prompt survive. A leading BOS is kept in place.
    2. Each response is truncated on the RIGHT so that len(prompt) + len(response) <= max_length;
       its last token is always EOS.
    3. If, after step 1, no room remains for one response token plus EOS, the pair is dropped
       (`encode_pair` returns None) and counted in `dropped` (not in the truncation counts).

Batches
    Labels are aligned with `input_ids` (NOT shifted): `labels[b, t]` is the target at position t
    and is -100 on prompt and padding positions. The loss helper
    (`orpo.losses.sequence_logprobs`) shifts by one: logits at t-1 predict the token at t.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from orpo.data.schema import PreferenceExample

IGNORE_INDEX = -100  # label value skipped by cross-entropy and by our log-prob helper

# Jinja form of the fallback template, for anyone who wants to install it on a tokenizer
# (`tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE`); `format_prompt` renders the same text.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def render_simple_template(messages: list[dict[str, str]]) -> str:
    turns = "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)
    return turns + "<|assistant|>\n"


def _has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_format(tokenizer: PreTrainedTokenizerBase) -> str:
    """Which prompt rendering training, generation and judging use with this tokenizer."""
    return "the model's chat template" if _has_chat_template(tokenizer) else "the simple template"


def format_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """Render chat messages as the text the assistant's reply continues."""
    if _has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_simple_template(messages)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of the formatted prompt (BOS first under the simple template). No truncation."""
    ids = tokenizer.encode(format_prompt(tokenizer, messages), add_special_tokens=False)
    if not _has_chat_template(tokenizer) and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def prompt_text_within(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_prompt_length: int
) -> str:
    """The formatted prompt as text, cut as `encode_pair` cuts its tokens (from the left, a
    leading BOS kept): for trainers that take text, so that they see the prompt ours trains on.
    The simple template's BOS is not text (`encode_prompt` puts its id first) and stays out."""
    ids = encode_prompt(tokenizer, messages)
    if len(ids) <= max_prompt_length:
        return format_prompt(tokenizer, messages)
    kept = _truncate_prompt_left(ids, max_prompt_length, tokenizer.bos_token_id)
    if not _has_chat_template(tokenizer) and kept[:1] == [tokenizer.bos_token_id]:
        kept = kept[1:]
    return tokenizer.decode(kept)


@dataclass
class EncodedPair:
    """One preference pair as token ids; both responses end with `eos_token_id`."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    example_id: str


@dataclass
class TruncationStats:
    """How many pairs the truncation policy touched (see the module docstring)."""

    total: int = 0  # pairs seen
    prompt_truncated: int = 0  # kept pairs whose prompt lost tokens on the left
    response_truncated: int = 0  # kept pairs where chosen or rejected lost tokens on the right
    dropped: int = 0  # pairs with no room for a response token + EOS

    def summary(self) -> str:
        kept = self.total - self.dropped
        return (
            f"{self.total} pairs, {kept} kept: {self.prompt_truncated} prompts truncated (left), "
            f"{self.response_truncated} with a response truncated (right, EOS kept), "
            f"{self.dropped} dropped (no room for a response)"
        )


def _truncate_prompt_left(
    prompt_ids: list[int], max_prompt_length: int, bos_id: int | None
) -> list[int]:
    if len(prompt_ids) <= max_prompt_length:
        return prompt_ids
    if bos_id is not None and prompt_ids[0] == bos_id and max_prompt_length > 1:
        return [bos_id, *prompt_ids[len(prompt_ids) - (max_prompt_length - 1) :]]
    return prompt_ids[len(prompt_ids) - max_prompt_length :]


def _fit_response(
    tokenizer: PreTrainedTokenizerBase, text: str, budget: int
) -> tuple[list[int], bool]:
    """Response tokens + EOS, cut on the right to `budget` tokens (EOS kept last); was it cut?"""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return [*ids[: budget - 1], tokenizer.eos_token_id], len(ids) + 1 > budget


def encode_pair(
    tokenizer: PreTrainedTokenizerBase,
    example: PreferenceExample,
    max_length: int,
    max_prompt_length: int,
    stats: TruncationStats | None = None,
) -> EncodedPair | None:
    """Tokenise one example under the truncation policy; None if it has to be dropped."""
    if max_prompt_length < 1 or max_length < 2:
        raise ValueError(
            f"need max_prompt_length >= 1 and max_length >= 2, "
            f"got {max_prompt_length} and {max_length}"
        )
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: responses could not end")
    stats = stats if stats is not None else TruncationStats()
    stats.total += 1

    full_prompt = encode_prompt(tokenizer, example.prompt)
    prompt_ids = _truncate_prompt_left(full_prompt, max_prompt_length, tokenizer.bos_token_id)
    budget = max_length - len(prompt_ids)  # room for one response, EOS included
    if budget < 2:
        stats.dropped += 1
        return None

    chosen_ids, chosen_cut = _fit_response(tokenizer, example.chosen, budget)
    rejected_ids, rejected_cut = _fit_response(tokenizer, example.rejected, budget)
    stats.prompt_truncated += int(len(prompt_ids) < len(full_prompt))
    stats.response_truncated += int(chosen_cut or rejected_cut)
    return EncodedPair(prompt_ids, chosen_ids, rejected_ids, example.id)


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable[PreferenceExample],
    max_length: int,
    max_prompt_length: int,
) -> tuple[list[EncodedPair], TruncationStats]:
    """Encode every example; dropped ones are left out and counted in the stats."""
    stats = TruncationStats()
    encoded = [encode_pair(tokenizer, ex, max_length, max_prompt_length, stats) for ex in examples]
    return [pair for pair in encoded if pair is not None], stats


# --- collation ---------------------------------------------------------------------------------


def _pad_batch(
    prompts: list[list[int]], responses: list[list[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad prompt+response rows into a batch; labels only on response tokens (EOS incl.).

    Returns input_ids (N, T) long, attention_mask (N, T) long, labels (N, T) long with -100 on
    prompt and padding, response_mask (N, T) bool, where N = len(prompts), T = longest row.
    """
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    n, t = len(lengths), max(lengths)
    input_ids = torch.full((n, t), pad_id, dtype=torch.long)  # (N, T)
    attention_mask = torch.zeros((n, t), dtype=torch.long)  # (N, T)
    response_mask = torch.zeros((n, t), dtype=torch.bool)  # (N, T)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        sequence = torch.tensor([*prompt, *response], dtype=torch.long)
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
        response_mask[row, len(prompt) : len(sequence)] = True
    # Masks come from positions, never from comparing ids with pad_id: safe even if pad == eos.
    labels = input_ids.masked_fill(~response_mask, IGNORE_INDEX)  # (N, T)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "response_mask": response_mask,
    }


def collate_pairs(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch for ONE forward pass over chosen and rejected (ORPO, DPO).

    Rows 0..B-1 are prompt+chosen, rows B..2B-1 prompt+rejected (same order of pairs), so
    `x[:B]` / `x[B:]` split any per-row result. Keys, all (2B, T): input_ids long,
    attention_mask long, labels long (-100 on prompt and padding; EOS is a label),
    response_mask bool (True on response tokens incl. EOS). Right padding with `pad_id`.
    """
    if not pairs:
        raise ValueError("cannot collate an empty list of pairs")
    prompts = [p.prompt_ids for p in pairs] * 2
    responses = [p.chosen_ids for p in pairs] + [p.rejected_ids for p in pairs]
    return _pad_batch(prompts, responses, pad_id)


def collate_chosen(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """The chosen rows only, same keys, all (B, T): the SFT batch."""
    if not pairs:
        raise ValueError("cannot collate an empty list of pairs")
    return _pad_batch([p.prompt_ids for p in pairs], [p.chosen_ids for p in pairs], pad_id)


def collate_texts(token_lists: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """A plain LM batch (e.g. pretraining on domain text): every non-pad token is a label.

    Same keys, all (N, T); response_mask equals attention_mask (as bool).
    """
    if not token_lists:
        raise ValueError("cannot collate an empty list of sequences")
    return _pad_batch([[] for _ in token_lists], token_lists, pad_id)


def reward_inputs(pairs: list[EncodedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """Bradley-Terry reward model inputs: input_ids and attention_mask, (2B, T), chosen first.

    Right-padded with `pad_id`; OPTForSequenceClassification scores the last token that is not
    `config.pad_token_id` (the EOS here), so the model's pad id must be this `pad_id`.
    """
    batch = collate_pairs(pairs, pad_id)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
