"""Generations of a trained policy on the held-out test prompts (paper Sec. 6: K samples per
prompt at temperature 1.0 for win rates and diversity, plus one greedy answer to show).

Prompts are rendered exactly as in training (`orpo.data.tokenize.encode_prompt`: chat template
or the simple template with BOS first), cut from the left like training prompts when a
`max_prompt_length` is given, LEFT-padded into a batch (a decoder continues from the last
position, so every prompt must end there). Sampling is pure temperature sampling: top-k and
top-p are switched off explicitly (Hugging Face would otherwise apply top_k=50). Generation stops
at EOS; texts are decoded with `skip_special_tokens`.

Determinism: every batch re-seeds torch's global generator (inside `fork_rng`, so the caller's
RNG state is untouched) from (`seed`, batch start), so the same model, prompts, `seed` and
`batch_size` give the same texts on every run, also when several threads generate at once
(seeding and sampling hold one process-wide lock).

Under DeepSpeed ZeRO-3 pass `engine.module` as the model; with several ranks pass
`synced_gpus=True` and give every rank the same number of batches (the forward passes are
collective: a rank that stops early would leave the others waiting).
"""

from __future__ import annotations

import threading

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from orpo.data.schema import PreferenceExample
from orpo.data.tokenize import encode_prompt

_SAMPLING_LOCK = threading.Lock()
GREEDY_SAMPLE_INDEX = -1  # the contract's sample_index of the greedy answer


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, example: PreferenceExample, max_prompt_length: int | None
) -> list[int]:
    """Training's prompt ids; over `max_prompt_length`, cut from the left keeping a leading BOS
    (the truncation policy of `orpo.data.tokenize`)."""
    ids = encode_prompt(tokenizer, example.prompt)
    if max_prompt_length is None or len(ids) <= max_prompt_length:
        return ids
    bos = tokenizer.bos_token_id
    if bos is not None and ids[0] == bos and max_prompt_length > 1:
        return [bos, *ids[len(ids) - (max_prompt_length - 1) :]]
    return ids[len(ids) - max_prompt_length :]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T) long, padded on the LEFT."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


def _generation_configs(
    tokenizer: PreTrainedTokenizerBase, k: int, temperature: float, max_new_tokens: int
) -> tuple[GenerationConfig, GenerationConfig]:
    ids = dict(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        max_new_tokens=max_new_tokens,
    )
    sampled = GenerationConfig(
        do_sample=True, temperature=temperature, top_k=0, top_p=1.0, num_return_sequences=k, **ids
    )
    greedy = GenerationConfig(do_sample=False, num_return_sequences=1, **ids)
    return sampled, greedy


def _decode_rows(
    tokenizer: PreTrainedTokenizerBase, generated: torch.Tensor
) -> list[tuple[str, int, bool]]:
    """(text, n_tokens, finished) per row of generated ids (N, G); n_tokens excludes EOS and
    padding; finished says whether the row emitted EOS (else max_new_tokens cut it)."""
    out = []
    eos = tokenizer.eos_token_id
    for row in generated.tolist():
        finished = eos in row
        tokens = row[: row.index(eos)] if finished else row
        out.append((tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), finished))
    return out


@torch.no_grad()
def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[PreferenceExample],
    *,
    k: int,
    temperature: float,
    max_new_tokens: int,
    batch_size: int,
    seed: int,
    synced_gpus: bool = False,
    max_prompt_length: int | None = None,
) -> list[dict]:
    """k sampled answers (sample_index 0..k-1) and one greedy answer (sample_index -1) per
    example: rows {prompt_id, sample_index, text, n_tokens, finished}, in example order."""
    if k < 1 or batch_size < 1:
        raise ValueError(f"need k >= 1 and batch_size >= 1, got k={k}, batch_size={batch_size}")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise ValueError("the tokenizer needs a pad token distinct from EOS (orpo.models)")
    sampled_cfg, greedy_cfg = _generation_configs(tokenizer, k, temperature, max_new_tokens)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows: list[dict] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        ids, mask = left_pad(
            [prompt_ids(tokenizer, ex, max_prompt_length) for ex in batch], tokenizer.pad_token_id
        )  # (B, T) each
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        width = ids.shape[1]
        # The global generator is process-wide: two threads sampling at once would draw from
        # each other's seeded stream, so seeding + sampling is one critical section.
        with (
            _SAMPLING_LOCK,
            torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        ):
            torch.manual_seed(seed * 1_000_003 + start)
            sampled = model.generate(
                **inputs, generation_config=sampled_cfg, synced_gpus=synced_gpus
            )  # (B*k, T+G), rows prompt-major
        greedy = model.generate(
            **inputs, generation_config=greedy_cfg, synced_gpus=synced_gpus
        )  # (B, T+G)
        decoded_sampled = _decode_rows(tokenizer, sampled[:, width:].cpu())
        decoded_greedy = _decode_rows(tokenizer, greedy[:, width:].cpu())
        for i, example in enumerate(batch):
            answers = [*decoded_sampled[i * k : (i + 1) * k], decoded_greedy[i]]
            indices = [*range(k), GREEDY_SAMPLE_INDEX]
            for index, (text, n_tokens, finished) in zip(indices, answers, strict=True):
                rows.append(
                    {
                        "prompt_id": example.id,
                        "sample_index": index,
                        "text": text,
                        "n_tokens": n_tokens,
                        "finished": finished,
                    }
                )
    model.train(was_training)
    return rows
