"""ZeRO-3 on one process, with the DeepSpeed config the lab generates for it (every parameter
resident, torch's linear, gradients all-reduced in place, a gradient bucket smaller than
the largest parameters, the optimizer stepped in sub-groups), fp32 weights serving as their
own optimizer masters, resident weights as views of their partitions, no per-module hooks,
gradients straight to the optimizer (on CPUs autograd's tensors themselves, the flat buffer
never written), the optimizer stepped in one fused call, trains the same numbers as the
plain-torch floor: the tuning changes where the work happens, not the arithmetic."""

from __future__ import annotations

import copy

import pytest
import torch

from orpo.config import OptimConfig, ResourcesConfig
from orpo.models import build_model, train_tokenizer
from orpo.training import engine as engine_module
from orpo.training.engine import DeepSpeedEngine, TorchEngine

pytestmark = pytest.mark.integration


def test_zero3_one_process_trains_like_plain_torch(single_rank, monkeypatch):
    import deepspeed

    tokenizer = train_tokenizer([f"word{i} text{i % 7} more{i % 13}" for i in range(300)], 300)
    # opt-medium has 3.3M parameters: several 1M-element optimizer sub-groups
    model = build_model("opt-medium", tokenizer, seed=0)
    # a gradient bucket smaller than the largest parameters, as SmolLM2's embedding is against
    # the real bucket: those gradients bypass it and must come out the same
    largest = max(p.numel() for p in model.parameters())
    monkeypatch.setattr(engine_module, "ONE_PROCESS_BUCKET", largest // 2)
    # two micro-batches per step: ZeRO-3 copies the first one's gradients and adds the second's
    optim = OptimConfig(
        lr=1e-3, epochs=1, batch_size=4, grad_accum=2, max_grad_norm=0.5, warmup_ratio=0.0
    )
    resources = ResourcesConfig(device="cpu", zero_stage=3)
    floor = TorchEngine(copy.deepcopy(model), optim, resources, total_steps=3)
    zero3 = DeepSpeedEngine(copy.deepcopy(model), optim, resources, total_steps=3)
    zero = zero3.config["zero_optimization"]
    assert zero["sub_group_size"] < sum(p.numel() for p in model.parameters())
    assert zero["memory_efficient_linear"] is False
    assert zero["reduce_scatter"] is False
    assert zero["reduce_bucket_size"] == largest // 2
    assert torch.nn.functional.linear is torch._C._nn.linear  # not patched by DeepSpeed
    from deepspeed.runtime.zero import stage3

    assert stage3.get_norm_dtype() == torch.float32  # the clipping norm, as torch takes it
    # fp32 weights are their own optimizer masters: no second fp32 copy of the model
    optimizer = zero3.engine.optimizer
    masters = optimizer.fp32_partitioned_groups_flat
    assert zero3.shared_master_groups == len(masters) > 1
    for weight, master in zip(optimizer.fp16_partitioned_groups_flat, masters, strict=True):
        assert master.data_ptr() == weight.data_ptr()
    # each resident weight is a view of its partition, not a second copy of the model
    params = list(zero3.module.parameters())
    assert zero3.weights_as_partitions == len(params) and zero3.steps_on_gradient_views
    assert zero3.gradients_to_partitions and zero3.adopted_gradients is not None
    # nothing to fetch or release: ZeRO-3's per-module hooks are off, its sub-modules hooked
    # as the floor's are (the engine's own prologue and epilogue on the whole model stay)
    assert zero3.without_module_hooks
    assert zero3.one_fused_step is not None

    def submodule_hooks(model: torch.nn.Module) -> int:
        return sum(
            len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks)
            for m in model.modules()
            if m is not model
        )

    assert submodule_hooks(zero3.module) == submodule_hooks(floor.module)
    buffer_views = dict(zero3.adopted_gradients.slots)

    def views_of_partitions() -> bool:
        return all(p.data_ptr() == p.ds_tensor.data_ptr() for p in params)

    assert views_of_partitions()
    ids = torch.randint(4, len(tokenizer), (8, 24), generator=torch.Generator().manual_seed(0))
    halves = [dict(input_ids=x, attention_mask=torch.ones_like(x), labels=x) for x in ids.chunk(2)]
    for step in range(3):
        for half in halves:
            losses = []
            for engine in (floor, zero3):
                loss = engine.forward(**half).loss
                engine.backward(loss)
                engine.step()
                losses.append(float(loss))
            assert losses[0] == pytest.approx(losses[1], rel=1e-5), step
        # the gradients were autograd's own tensors, let go after the step: the flat buffer
        # was never written, and the slots are its views again
        assert optimizer.grad_partitions_flat_buffer.count_nonzero() == 0, step
        slots = zero3.adopted_gradients.slots
        assert all(slots[key] is view for key, view in buffer_views.items()), step
        assert floor.grad_norm() == pytest.approx(zero3.grad_norm(), rel=1e-4), step
        assert views_of_partitions(), step  # the gather after each step re-points them
    assert floor.grad_norm() > optim.max_grad_norm  # clipping took part
    with deepspeed.zero.GatheredParameters(params):
        trained = {n: p.detach().clone() for n, p in zero3.module.named_parameters()}
    # AdamW divides each element's update by its gradient's running RMS, so where a gradient is
    # near zero, rounding-level differences (summation order on views into ZeRO-3's flat buffer,
    # and the CPU's vector width) move that element by a small fraction of the learning rate: up
    # to 2e-5 (2% of lr) on a few elements of the first layer on an AMD EPYC without AVX-512,
    # with or without the bucket bypass. A gradient dropped or misplaced moves whole tensors by
    # about lr per step, far past both checks (a scaled one shows in the gradient norms above).
    for name, p in floor.module.named_parameters():
        torch.testing.assert_close(trained[name], p.detach(), rtol=1e-4, atol=optim.lr / 20)
        start = model.get_parameter(name).detach()
        update, floor_update = trained[name] - start, p.detach() - start
        # k_proj's bias has a zero gradient in exact arithmetic: its update is rounding noise
        assert (update - floor_update).norm() <= 1e-3 * floor_update.norm() + optim.lr / 20, name
    moved = max(
        (p.detach() - model.get_parameter(n)).abs().max()
        for n, p in floor.module.named_parameters()
    )
    assert moved > 1e-4  # three real updates, not a comparison of two untouched models


def test_one_fused_step_is_deepspeeds_step_to_the_bit(single_rank):
    """The fused step against DeepSpeed's own sub-group walk, two engines on copies of one model
    and the same micro-batches: weights, AdamW's moments and gradient norms equal to the bit;
    DeepSpeed's step is taken only where AdamW's state does not exist yet, and for a non-finite
    gradient, which it skips."""
    tokenizer = train_tokenizer([f"word{i} text{i % 7} more{i % 13}" for i in range(300)], 300)
    model = build_model("opt-medium", tokenizer, seed=0)  # several optimizer sub-groups
    optim = OptimConfig(
        lr=1e-3, epochs=1, batch_size=4, grad_accum=2, max_grad_norm=0.5, warmup_ratio=0.0
    )
    resources = ResourcesConfig(device="cpu", zero_stage=3)
    fused = DeepSpeedEngine(copy.deepcopy(model), optim, resources, total_steps=4)
    walked = DeepSpeedEngine(copy.deepcopy(model), optim, resources, total_steps=4)
    walked.engine.optimizer.step = walked.one_fused_step.deepspeed_step
    deepspeed_steps = []
    own = fused.one_fused_step.deepspeed_step
    fused.one_fused_step.deepspeed_step = lambda: deepspeed_steps.append(1) or own()
    assert len(fused.engine.optimizer.fp16_groups) > 1

    def states(engine) -> list[torch.Tensor]:
        optimizer = engine.engine.optimizer
        return [
            optimizer.optimizer.state[flat][key]
            for flat in optimizer.fp32_partitioned_groups_flat
            for key in ("exp_avg", "exp_avg_sq", "step")
        ]

    def weights(engine) -> list[torch.Tensor]:
        return [p.detach().clone() for p in engine.module.parameters()]

    ids = torch.randint(4, len(tokenizer), (8, 24), generator=torch.Generator().manual_seed(0))
    halves = [dict(input_ids=x, attention_mask=torch.ones_like(x), labels=x) for x in ids.chunk(2)]
    for step in range(3):
        for engine in (fused, walked):
            for half in halves:
                engine.backward(engine.forward(**half).loss)
                engine.step()
        assert fused.grad_norm() == walked.grad_norm() > optim.max_grad_norm, step  # clipped
        assert all(map(torch.equal, weights(fused), weights(walked))), step
        assert all(map(torch.equal, states(fused), states(walked))), step
    assert len(deepspeed_steps) == 1  # the first, which creates AdamW's state
    assert float(states(fused)[2]) == 3

    before = weights(fused)
    for half in halves:
        fused.backward(fused.forward(**half).loss)
        if half is halves[-1]:
            fused.engine.optimizer.averaged_gradients[0][0][0] = float("inf")
        fused.step()
    assert len(deepspeed_steps) == 2 and fused.grad_norm() == float("inf")
    assert all(map(torch.equal, weights(fused), before))  # the update was skipped
    for half in halves:  # and the weights are there for the next step, which is fused again
        fused.backward(fused.forward(**half).loss)
        fused.step()
    assert len(deepspeed_steps) == 2 and float(states(fused)[2]) == 4
    assert not any(map(torch.equal, weights(fused), before))
