"""Feed-forward blocks on the real tokens only: the same losses and gradients as over the
padded batch, on OPT and Llama, with or without LoRA, and nothing left hooked afterwards."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

from orpo.training.objectives import OBJECTIVES, Norms, ObjectiveConfig, n_examples, nll_tokens
from orpo.training.unpadded import feed_forward_ends, tokens_only_feed_forward

pytestmark = pytest.mark.unit
V, T = 50, 12


def opt():
    torch.manual_seed(0)
    return OPTForCausalLM(
        OPTConfig(
            vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, ffn_dim=32,
            word_embed_proj_dim=16, max_position_embeddings=T + 2, dropout=0.0,
        )
    )  # fmt: skip


def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=24, max_position_embeddings=T,
            tie_word_embeddings=True,
        )
    )  # fmt: skip


def with_lora(model):
    from peft import LoraConfig, get_peft_model

    targets = ["fc1", "fc2", "q_proj"] if isinstance(model, OPTForCausalLM) else None
    return get_peft_model(model, LoraConfig(r=2, target_modules=targets, task_type="CAUSAL_LM"))


def pair_batch(b: int = 3) -> dict[str, torch.Tensor]:
    """b chosen rows, then b rejected rows, right-padded to T: lengths 4..12, prompt of 2."""
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([5, 12, 4, 9, 7, 6][: 2 * b])
    ids = torch.randint(1, V, (2 * b, T), generator=g)
    attention = (torch.arange(T) < lengths[:, None]).long()
    response = attention.clone()
    response[:, :2] = 0
    ids = torch.where(attention.bool(), ids, torch.zeros_like(ids))
    labels = torch.where(response.bool(), ids, torch.full_like(ids, -100))
    return {"input_ids": ids, "attention_mask": attention, "labels": labels, "response_mask": response}  # fmt: skip


def loss_and_grads(model, batch, unpadded: bool):
    cfg = ObjectiveConfig(stage="orpo", orpo_lambda=0.5)
    norms = Norms(tokens=nll_tokens(batch, "orpo", "response"), examples=n_examples(batch, "orpo"))
    model.zero_grad(set_to_none=True)
    mask = batch["attention_mask"] if unpadded else None
    with tokens_only_feed_forward(model, mask) as blocks:
        loss, _ = OBJECTIVES["orpo"](model, batch, norms, cfg)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return blocks, loss.detach(), grads


@pytest.mark.parametrize(
    "build", [opt, llama, lambda: with_lora(opt()), lambda: with_lora(llama())]
)
def test_same_loss_and_gradients_as_over_the_padding(build):
    model = build()
    batch = pair_batch()
    _, padded_loss, padded_grads = loss_and_grads(model, batch, unpadded=False)
    blocks, loss, grads = loss_and_grads(model, batch, unpadded=True)
    assert blocks == 2  # both layers' blocks ran on the real tokens
    assert torch.equal(loss, padded_loss)  # the forward pass is the same to the bit
    assert grads.keys() == padded_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_blocks_see_only_real_tokens_and_the_hooks_come_off():
    model = opt()
    batch = pair_batch()
    seen = []
    entry, _ = feed_forward_ends(model)[0]
    probe = entry.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    with tokens_only_feed_forward(model, batch["attention_mask"]):
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    probe.remove()
    assert seen == [torch.Size([int(batch["attention_mask"].sum()), 16])]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_a_batch_without_padding_or_a_supported_layer_is_left_alone():
    model = opt()
    full = torch.ones(2, T, dtype=torch.long)
    with tokens_only_feed_forward(model, full) as blocks:
        assert blocks == 0
    with tokens_only_feed_forward(model, None) as blocks:
        assert blocks == 0
    with tokens_only_feed_forward(torch.nn.Linear(2, 2), pair_batch()["attention_mask"]) as n:
        assert n == 0
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_inputs_of_another_shape_pass_through():
    """A forward over other inputs than the mask's (a generation step, say) is not gathered."""
    model = opt()
    batch = pair_batch()
    other = torch.randint(1, V, (1, 3))
    with torch.no_grad():
        expected = model(input_ids=other).logits
        with tokens_only_feed_forward(model, batch["attention_mask"]):
            got = model(input_ids=other).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
