"""Feed-forward blocks on a batch's real tokens only, not its padding.

A batch is padded to its longest row (chosen and rejected together, for the pair methods), and
every layer computes every position, padding included. The attention needs that (B, T) layout;
a decoder layer's feed-forward block does not: it maps each position on its own, and what it
computes at a padding position never reaches a real one (padding is masked out of the
attention, and out of every loss). So while `tokens_only_feed_forward` is active, each
supported layer's feed-forward block runs on the (n, H) rows of the real tokens: gathered on
the way in, scattered back into place (zeros at the padding, which the residual then passes
through) on the way out. Real tokens compute what they did before: on the CPU in fp32 the
loss came out the same to the bit (tests/unit/test_unpadded.py; a product over fewer rows may
round differently elsewhere), and weight gradients, summed over fewer rows, to float rounding.

The feed-forward block holds two thirds of a layer's matrix products (8 H^2 of 12 H^2 a
token in OPT); the bench's batches are 30% padding, and an ORPO step at opt-125m-shape took
0.86x the time with it (`benchmarks/step_settings.py --setting tokens-only-feed-forward`;
benchmarks/results/2026-12-07-tokens-only-feed-forward-opt125m.txt). Layers of other architectures
are left alone: their blocks may not be position-wise (a mixture of experts balances tokens
across the batch), so they are added here only once tested. The hooks live for one forward
pass, so activation checkpointing (a recomputation in the backward pass, outside them) would
need them kept on; the lab trains without it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

# decoder layer class -> (the module whose input enters its feed-forward block, the module
# whose output leaves it): OPT's block is inline in the layer (fc1, activation, fc2), Llama's a
# module of its own
FEED_FORWARD_ENDS = {
    "OPTDecoderLayer": ("fc1", "fc2"),
    "LlamaDecoderLayer": ("mlp", "mlp"),
}


def feed_forward_ends(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(entry, exit) modules of each supported decoder layer's feed-forward block, in order
    (LoRA's wrapper included: its adapted linear layers keep the names)."""
    ends = []
    for module in model.modules():
        names = FEED_FORWARD_ENDS.get(type(module).__name__)
        if names:
            ends.append((getattr(module, names[0]), getattr(module, names[1])))
    return ends


@contextmanager
def tokens_only_feed_forward(
    model: nn.Module, attention_mask: torch.Tensor | None
) -> Iterator[int]:
    """Within the block, forward passes of `model` over inputs with this (B, T)
    `attention_mask` run each supported feed-forward block on the real tokens only; yields how
    many blocks do (0: no padding, no mask, or no supported layer)."""
    ends = feed_forward_ends(model) if attention_mask is not None else []
    if not ends or bool(attention_mask.all()):
        yield 0
        return
    positions = attention_mask.numel()
    real = attention_mask.reshape(-1).nonzero().squeeze(1)  # (n,) flat indices of real tokens
    leading: list[torch.Size | None] = [None]  # the entry's leading shape, while gathered

    def gather(module, args):
        x = args[0] if args else None
        if x is None or x.numel() != positions * x.shape[-1]:  # not this batch: leave it
            leading[0] = None
            return None
        leading[0] = x.shape[:-1]  # (B, T) or OPT's flattened (B * T,)
        return (x.reshape(positions, x.shape[-1]).index_select(0, real), *args[1:])

    def scatter(module, args, out):
        if leading[0] is None:
            return None
        full = out.new_zeros(positions, out.shape[-1]).index_copy(0, real, out)
        shape, leading[0] = leading[0], None
        return full.view(*shape, out.shape[-1])

    handles = []
    try:
        for entry, exit_ in ends:
            handles.append(entry.register_forward_pre_hook(gather))
            handles.append(exit_.register_forward_hook(scatter))
        yield len(ends)
    finally:
        for handle in handles:
            handle.remove()
