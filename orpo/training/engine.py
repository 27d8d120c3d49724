"""DeepSpeed, confined to this module.

`DeepSpeedEngine` wraps `deepspeed.initialize` (ZeRO stage from our validated config, 3 by
default) behind the small interface the training loop needs; `TorchEngine` is the same interface
over a plain single-process AdamW loop (the benchmark's floor, and a reference in tests).
DeepSpeed keys are generated here from validated fields only: DeepSpeed silently accepts misspelt
keys, so users never hand us raw DeepSpeed JSON.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors
from torch.optim.adamw import adamw as adamw_functional

from orpo.config import OptimConfig, ResourcesConfig
from orpo.timing import drop_pages
from orpo.training.unpadded import tokens_only_feed_forward


def pick_device(resources: ResourcesConfig) -> str:
    if resources.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return resources.device


def pick_precision(resources: ResourcesConfig, device: str) -> str:
    if resources.precision == "auto":  # bf16 is ~8x slower than fp32 on these CPUs
        return "bf16" if device == "cuda" else "fp32"
    return resources.precision


def eval_placement(resources: ResourcesConfig) -> tuple[torch.device, torch.dtype]:
    """Where evaluation (generation, judging, log ratios) runs: on the training device, in the
    training precision (bf16 on GPUs, fp32 on CPU, where bf16 is ~8x slower)."""
    device = pick_device(resources)
    dtype = torch.bfloat16 if pick_precision(resources, device) == "bf16" else torch.float32
    return torch.device(device), dtype


def warmup_cosine(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup to 1, then cosine decay to 0 (the paper's schedule)."""
    warmup = int(round(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


ONE_PROCESS_BUCKET = 2_000_000  # elements of ZeRO-3's gradient bucket on one process (8 MB fp32)


def deepspeed_config(
    optim: OptimConfig,
    resources: ResourcesConfig,
    world_size: int,
    precision: str,
    n_params: int | None = None,
    *,
    device: str,
) -> dict:
    """DeepSpeed's JSON, from validated fields and what the engine knows: world size, device
    and, when given, the model's parameter count. How each
    generated setting was measured: benchmarks/zero3-tuning.md."""
    zero: dict = {
        "stage": resources.zero_stage,
        "stage3_gather_16bit_weights_on_model_save": True,
    }
    if resources.zero_stage == 3 and device == "cpu":
        # ZeRO-3 steps the optimizer on flat fp32 partitions in sub-groups of this many
        # elements (default 1e9: the whole model at once). On a CPU every elementwise Adam
        # op over one model-sized tensor allocates model-sized temporaries (fresh, page-
        # faulted memory each step) and streams them through memory: 2.1 s of a 9.5 s step
        # at 87M parameters. In 4 MB sub-groups the step took 0.47 s (plain torch: 0.31 s).
        # Adam is elementwise and the clipping norm is taken over all groups, so the update
        # is the same.
        zero["sub_group_size"] = 1_000_000
    if resources.zero_stage == 3 and world_size == 1 and n_params:
        # One process partitions nothing, yet ZeRO-3 releases and re-gathers every parameter
        # through hooks at each forward/backward. Every parameter at or below this threshold
        # stays resident: with the whole model's count, all of them do (no fetch/release).
        zero["stage3_param_persistence_threshold"] = int(n_params)
        # With every weight resident there is nothing for DeepSpeed's own linear function to
        # re-gather in the backward pass, and it is slower than torch's: keep torch's.
        zero["memory_efficient_linear"] = False
        # Gradients then leave the bucket through one in-place all-reduce of the bucket (a
        # no-op for one rank) instead of a reduce-scatter that first copies them into a new
        # flat buffer: 4.42 -> 3.89 s of backward at 87M parameters (plain torch: 3.82 s).
        zero["reduce_scatter"] = False
        # ZeRO-3 allocates its gradient bucket up front with reduce_bucket_size elements
        # (default 5e8 = 2 GB in fp32) and keeps it for the whole run. On one process it only
        # groups gradient copies, and a gradient larger than the bucket is reduced from its own
        # tensor instead (the embedding here, at the end of backward, when activations are
        # gone): 8 MB suffice. Against a bucket as large as the embedding, -104 MB resident on
        # SmolLM2-135M; bucketing does not change the values.
        zero["reduce_bucket_size"] = ONE_PROCESS_BUCKET
    # several processes: DeepSpeed's defaults (not measured here)
    return {
        "train_micro_batch_size_per_gpu": optim.batch_size,
        "gradient_accumulation_steps": optim.grad_accum,
        "train_batch_size": optim.batch_size * optim.grad_accum * world_size,
        "gradient_clipping": optim.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        # torch's AdamW: avoids compiling DeepSpeed's CPU Adam (~75 s on a fresh machine)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1_000_000_000,
        "wall_clock_breakdown": False,
    }


PEFT_PREFIX = "base_model.model."  # peft's wrapper names the wrapped model's keys with this


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every parameter, or only LoRA's adapters (the rest frozen)."""
    return [p for p in model.parameters() if p.requires_grad]


def adamw(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.AdamW:
    """Both engines' optimizer (and TRL's default): torch's fused AdamW kernel. On CPU tensors
    torch otherwise steps parameter by parameter in Python, 0.45 s a step over SmolLM2-135M's
    272 tensors against 0.07 s fused. `job.OPTIMIZER` names it in every cell's key."""
    return torch.optim.AdamW(
        trainable(model), lr=optim.lr, weight_decay=optim.weight_decay, fused=True
    )


def init_distributed(device: str) -> None:
    """Join the process group the launcher set up (torchrun/deepspeed export RANK etc.).
    A bare `python` process gets single-rank defaults so DeepSpeed skips MPI discovery."""
    import deepspeed

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    # DeepSpeed's CPU accelerator counts its devices from LOCAL_SIZE, which its own launcher
    # sets and torchrun does not; without it, every ZeRO-3 gradient reduction runs
    # `numactl --hardware` in a subprocess to count NUMA nodes instead.
    os.environ.setdefault("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "MASTER_PORT" not in os.environ:
        from orpo.training.launch import free_port

        os.environ["MASTER_PORT"] = str(free_port())
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")


SHM_ALLREDUCE_DIR = Path("/dev/shm")


def shm_allreduce_names(port: int | str, rank: str = "*") -> list[Path]:
    """The shared-memory buffers DeepSpeed's CPU backend made for a process group on `port`
    (all ranks by default); the name format is DeepSpeed's (its shm all-reduce op)."""
    pattern = f"deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_{rank}"
    return sorted(SHM_ALLREDUCE_DIR.glob(pattern))


def release_shm_allreduce_name(rank: int) -> None:
    """Unlink this rank's shared-memory all-reduce buffer name, once every rank has opened it.

    On CPU, DeepSpeed's communication backend creates one 66 MB buffer per rank in /dev/shm
    (RAM) at start-up, opens its peers' buffers by name, and never removes the names: each
    cell's processes left theirs behind after exiting. Here 16 GB of a 24 GB machine had gone
    that way before the kernel began killing cells for memory. All ranks opened all names
    while DeepSpeed started (the barrier makes sure every rank got that far); the mapping stays
    valid until the process ends, and then its memory is freed. (A process killed before this
    point still leaves its name; nothing else can tell a dead cell's name from a live one's.)"""
    dist.barrier()
    for name in shm_allreduce_names(os.environ.get("MASTER_PORT", ""), str(rank)):
        name.unlink(missing_ok=True)


def share_fp32_masters(optimizer) -> int:
    """Let ZeRO-3's fp32 master partitions be its partitioned weights when both are fp32 on one
    device, as DeepSpeed means them to be; returns how many optimizer sub-groups now share.

    ZeRO-3 keeps the model's weights as flat partitions ("fp16" groups, in the training
    precision) and steps the optimizer on fp32 master copies of them. When the weights already
    are fp32 on the optimizer's device (fp32 training: every CPU cell), DeepSpeed 0.19.8 means
    to use the weights themselves as masters, but its check compares a tensor's `torch.device`
    with the accelerator's device *name*, a string, which is never equal: it clones a second
    fp32 copy of the whole model (87M parameters: 332 MB). Re-pointing each master (the same
    tensor object, so the optimizer's groups and state keep referring to it) at its weights
    frees that copy; the step then updates the weights in place and DeepSpeed's copy of masters
    into weights becomes a copy onto itself, which torch skips. Each pair is checked equal
    first, so the arithmetic is unchanged. bf16 weights (GPUs) keep their fp32 masters."""
    weights = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    masters = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    if weights is None or masters is None:  # not ZeRO-3
        return 0
    shared = 0
    for weight, master in zip(weights, masters, strict=True):
        if (
            weight is None  # offloaded to NVMe
            or weight.dtype != master.dtype
            or weight.device != master.device
            or weight.shape != master.shape
        ):
            continue
        if weight.data_ptr() != master.data_ptr():
            if not torch.equal(weight, master):
                continue
            master.data = weight.data
        shared += 1
    return shared


def gradient_norms_in_fp32() -> None:
    """Take ZeRO-3's gradient norm (for clipping, and the logged `train/grad_norm`) in fp32, as
    torch's `clip_grad_norm_` does for the plain-torch floor, instead of over an fp64 copy of
    each gradient. For fp32 training on a CPU: the copy of the largest gradient (the embedding:
    309 MB at opt-125m-shape, 226 MB for SmolLM2-135M) was fresh memory every step, page
    faults and all (with `weights_as_partitions`, ZeRO-3's step went 0.42 -> 0.32 s and 90k ->
    37k faults at opt-125m-shape). DeepSpeed 0.19.8 picks the dtype by one module-level
    function in its ZeRO-3 optimizer module, with no setting; it is replaced there, for this
    process (a training process holds one engine)."""
    from deepspeed.runtime.zero import stage3

    stage3.get_norm_dtype = _fp32


def _fp32() -> torch.dtype:
    return torch.float32


def flatten_adjacent_views(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One flat tensor with the values of `tensors` in order: a view when they already lie end
    to end in one storage, else a copy (torch's `_flatten_dense_tensors`, DeepSpeed's own)."""
    if tensors and _end_to_end(tensors):
        first, total = tensors[0], sum(t.numel() for t in tensors)
        return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (total,))
    return _flatten_dense_tensors(tensors)


def _end_to_end(tensors: list[torch.Tensor]) -> bool:
    """Whether contiguous `tensors` of one dtype follow one another in one storage."""
    first = tensors[0]
    offset = first.storage_offset()
    for t in tensors:
        if (
            not t.is_contiguous()
            or t.dtype != first.dtype
            or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or t.storage_offset() != offset
        ):
            return False
        offset += t.numel()
    return True


def step_on_gradient_views(optimizer) -> bool:
    """On one process, let ZeRO-3's optimizer step each sub-group on a view of its gradients
    instead of a flattened copy; True when it does.

    ZeRO-3 accumulates gradients in one flat buffer, a narrow view per weight in order, and
    before stepping a sub-group it flattens that sub-group's views into a new tensor: a copy
    of every gradient, every step, in fresh memory (the embedding's sub-group alone: 154 MB at
    opt-125m-shape, 113 MB for SmolLM2-135M): 0.32 -> 0.18 s and 37k -> 0 page faults of
    ZeRO-3's step at opt-125m-shape, against plain torch's 0.16 s. The views of a
    sub-group lie end to end, so the flat tensor can be a view of the buffer: the same values.
    The step scales that view in place (clipping), which the next step's first gradient
    overwrites anyway. Its other use on one process, the bucket of gradients all-reduced in
    place, copies the result back onto the same memory. Several processes: left as it is."""
    if dist.get_world_size() != 1 or not hasattr(optimizer, "flatten"):
        return False
    optimizer.flatten = flatten_adjacent_views
    return True


GRAD_SLOTS = "_DeepSpeedZeroOptimizer_Stage3__param_id_to_grad_partition"  # DeepSpeed's private


class AdoptedGradients:
    """ZeRO-3's gradient slots on one CPU process: each weight's gradient, the tensor autograd
    made, becomes its slot until the optimizer has stepped, instead of being copied into the
    slot's place in the flat gradient buffer.

    Copying meant writing a whole model's worth of gradients into that buffer every backward.
    Kept resident between steps, the buffer is memory plain torch does not hold at its peak
    (the start of the backward, when torch has freed its gradients); with its pages handed back
    after each step, every backward faulted them in again, fresh memory that costs about 1 s per
    GB on a 2-core VM (0.24-0.55 s of a ~4 s step at opt-125m-shape). Adopted, the gradients are
    held, and freed after the step, exactly as plain torch holds its `.grad`s, and the buffer is
    never written: its pages go back once, here. A weight with no gradient in a window reads its
    untouched slot: zeros. Later micro-batches of a window add onto the adopted tensor."""

    def __init__(self, optimizer):
        self.slots: dict[int, torch.Tensor] = getattr(optimizer, GRAD_SLOTS)
        self.buffer_views = dict(self.slots)  # the slots as DeepSpeed made them
        drop_pages(optimizer.grad_partitions_flat_buffer)
        self.scratch = optimizer.grad_partitions_flat_buffer.new_empty(0)
        self.preparing = False
        optimizer.flatten = self.flatten
        optimizer._prepare_fp32_grad_for_sub_group = functools.partial(
            self._prepare_with_scratch, optimizer._prepare_fp32_grad_for_sub_group
        )

    @staticmethod
    def applies(optimizer) -> bool:
        """On CPUs only: a GPU cannot hand the buffer back, so adopting would hold both."""
        buffer = optimizer.grad_partitions_flat_buffer
        return buffer.device.type == "cpu" and all(
            p.dtype == buffer.dtype for group in optimizer.fp16_groups for p in group
        )

    def receive(self, ds_id: int, grad: torch.Tensor) -> None:
        if self.slots[ds_id] is self.buffer_views[ds_id]:  # the window's first gradient
            self.slots[ds_id] = grad
        else:
            self.slots[ds_id].add_(grad)

    def release(self) -> None:
        """After the optimizer step: the gradients are dead; the slots are DeepSpeed's again."""
        self.slots.update(self.buffer_views)

    def flatten(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """ZeRO-3's flatten, while it prepares a sub-group's gradient for the optimizer: the
        adopted gradients of a sub-group of several weights no longer lie end to end, so they
        are concatenated into the one scratch tensor every sub-group reuses (the optimizer steps
        the sub-groups one after another, each done with its gradient before the next) instead
        of into fresh memory each time; a view where they do lie end to end, as before."""
        if not self.preparing or _end_to_end(tensors):
            return flatten_adjacent_views(tensors)
        total = sum(t.numel() for t in tensors)
        if self.scratch.numel() < total:
            self.scratch = tensors[0].new_empty(total)
        return torch.cat(tensors, out=self.scratch[:total])

    def _prepare_with_scratch(self, prepare: Callable[[int], None], sub_group_id: int) -> None:
        self.preparing = True
        try:
            prepare(sub_group_id)
        finally:
            self.preparing = False


class OneFusedStep:
    """ZeRO-3's optimizer step on one CPU process, taken as plain torch takes it: one gradient
    norm over every weight's gradient at once, and one fused AdamW call over every weight,
    instead of DeepSpeed's walk through its sub-groups (per sub-group: the norm of each
    gradient, the gradients concatenated, a clip, an AdamW step, its bookkeeping).

    It applies where `AdoptedGradients` does and every sub-group's fp32 masters are its
    weights (`share_fp32_masters`): the update then needs no copy anywhere. Each weight steps on
    a view of its sub-group's flat fp32 partition and of that sub-group's AdamW moments, the
    tensors DeepSpeed's optimizer state and checkpoints hold, so they see every update; AdamW
    is elementwise, so stepping the views is the same arithmetic as stepping the flat tensor.
    The norm is DeepSpeed's (each gradient's 2-norm, squared, summed, square root) and so is the
    clip (gradients times 1 / max(1, (norm + 1e-6) / max_norm), skipped where that factor is
    exactly 1). The first step, which creates AdamW's state, a non-finite norm, or masters that
    no longer share their weights' memory take DeepSpeed's own step. At opt-125m-shape:
    benchmarks/zero3-tuning.md (2026-12-07, late)."""

    def __init__(self, optimizer):
        self.optimizer = optimizer
        self.deepspeed_step = optimizer.step
        optimizer.step = self.step

    @staticmethod
    def applies(optimizer, shared_master_groups: int) -> bool:
        inner = optimizer.optimizer
        return (
            isinstance(inner, torch.optim.AdamW)
            and all(
                g.get("fused") and not (g["amsgrad"] or g["maximize"] or g.get("capturable"))
                for g in inner.param_groups
            )
            and optimizer.dtype == torch.float32
            and optimizer.loss_scale == 1  # nothing to unscale
            and shared_master_groups == len(optimizer.fp16_groups)
            and not (optimizer.offload_optimizer or optimizer.swap_optimizer)
            and not getattr(optimizer, "use_muon", False)
            and optimizer.torch_autocast_gradscaler is None
            and all(  # each sub-group's flat partition is its weights end to end
                sum(p.partition_numel() for p in group) == flat.numel()
                for group, flat in zip(
                    optimizer.fp16_groups, optimizer.fp32_partitioned_groups_flat, strict=True
                )
            )
        )

    def _ready(self) -> bool:
        """AdamW's state exists, and each master still is its weights' memory."""
        opt, state = self.optimizer, self.optimizer.optimizer.state
        return all(
            "exp_avg" in state.get(flat, {}) and weights.data_ptr() == flat.data_ptr()
            for flat, weights in zip(
                opt.fp32_partitioned_groups_flat, opt.fp16_partitioned_groups_flat, strict=True
            )
        )

    @torch.no_grad()
    def step(self, closure=None):
        opt = self.optimizer
        if not self._ready():
            return self.deepspeed_step()
        sub_groups = [opt.averaged_gradients[i] for i in range(len(opt.fp16_groups))]
        grads = [g for sub_group in sub_groups for g in sub_group]
        norm = self._norm(sub_groups, torch._foreach_norm(grads))
        if not torch.isfinite(norm):
            return self.deepspeed_step()  # which skips the update, as it does for any overflow
        opt._pre_step()
        opt.overflow = False
        opt._global_grad_norm = norm
        if opt.clip_grad > 0:
            scale = torch.clamp((norm + 1e-6) / opt.clip_grad, min=1.0)
            if scale.item() != 1.0:
                torch._foreach_mul_(grads, 1.0 / scale)
        opt.zero_grad(set_to_none=True)
        for group_id, group in enumerate(opt.optimizer.param_groups):
            self._adamw(group_id, group, sub_groups)
        opt.averaged_gradients = {}  # the gradients are spent (DeepSpeed's own reset)
        opt._post_step(set())

    @staticmethod
    def _norm(sub_groups: list[list[torch.Tensor]], norms: list[torch.Tensor]) -> torch.Tensor:
        """DeepSpeed's global norm from each gradient's norm, in its order of operations:
        per sub-group the square root of the summed squares, then the 2-norm of those."""
        per_group, start = [], 0
        for sub_group in sub_groups:
            squares = torch.sum(torch.pow(torch.stack(norms[start : start + len(sub_group)]), 2))
            per_group.append(squares ** (1.0 / 2))
            start += len(sub_group)
        return torch.linalg.vector_norm(torch.stack(per_group), ord=2)

    def _adamw(self, group_id: int, group: dict, sub_groups: list[list[torch.Tensor]]) -> None:
        """One fused AdamW call over the views of every weight in param group `group_id`, with
        `sub_groups`' gradients."""
        opt, state = self.optimizer, self.optimizer.optimizer.state
        weights, grads, exp_avgs, exp_avg_sqs, steps, counters = [], [], [], [], [], []
        for sub_group_id, params in enumerate(opt.fp16_groups):
            if opt.sub_group_to_group_id[sub_group_id] != group_id:
                continue
            flat = opt.fp32_partitioned_groups_flat[sub_group_id]
            moments = state[flat]
            offset = 0
            for param, grad in zip(params, sub_groups[sub_group_id], strict=True):
                n = param.partition_numel()
                weights.append(flat.narrow(0, offset, n))
                grads.append(grad)
                exp_avgs.append(moments["exp_avg"].narrow(0, offset, n))
                exp_avg_sqs.append(moments["exp_avg_sq"].narrow(0, offset, n))
                steps.append(moments["step"].clone())  # the call counts each one up
                offset += n
            counters.append(moments["step"])
        beta1, beta2 = group["betas"]
        adamw_functional(
            weights,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            fused=True,
            amsgrad=False,
            beta1=beta1,
            beta2=beta2,
            lr=group["lr"],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        torch._foreach_add_(counters, 1)


def gradients_go_straight(optimizer) -> bool:
    """Whether ZeRO-3's reduction of each gradient is the identity here, so that it can go
    straight to its slot of the gradients the optimizer steps on (`send_gradients_straight`):
    one process, no offload (the gradients stay where the optimizer steps), no pre-division,
    no sequence parallelism, no tensor-parallel expert correction."""
    return not (
        dist.get_world_size() != 1
        or not hasattr(optimizer, GRAD_SLOTS)
        or optimizer.offload_optimizer
        or getattr(optimizer, "zenflow", False)
        or optimizer.gradient_predivide_factor != 1.0
        or optimizer.sequence_parallel_size != 1
        or getattr(optimizer, "autoep_folding_tp_group", None) is not None
    )


def send_gradients_straight(optimizer, adopted: AdoptedGradients | None) -> None:
    """Let each ZeRO-3 gradient go straight to its slot instead of through the reduction
    bucket, where `gradients_go_straight`: adopted as the slot itself when `adopted` is given
    (CPUs), else copied into the slot's place in the flat buffer.

    When a weight's gradient is ready, ZeRO-3 copies it into a bucket, divides the bucket by
    the averaging world size and all-reduces it in place, then copies each part into the flat
    buffer; a gradient larger than the bucket is instead flattened into a new tensor and
    reduce-scattered. On one rank the reduction is the identity and the division is by 1, so
    all of it comes down to one copy (or, when micro-batches accumulate, one addition) into the
    slot: measured at opt-125m-shape, benchmarks/zero3-tuning.md (2026-12-07, morning)."""

    @torch.no_grad()
    def to_slot(param: torch.nn.Parameter) -> None:
        if not getattr(param, "ds_grad_is_ready", True):  # DeepSpeed's own guard, kept
            return
        grad = param.grad.view(-1)
        param.grad = None
        if adopted is not None:
            adopted.receive(param.ds_id, grad)
            return
        slot = getattr(optimizer, GRAD_SLOTS)[param.ds_id]
        if optimizer.micro_step_id == 0:  # the window's first micro-batch: overwrite
            slot.copy_(grad)
        else:
            slot.add_(grad)

    optimizer.reduce_independent_p_g_buckets_and_remove_grads = to_slot


def weights_as_partitions(optimizer) -> int:
    """On one process, let every resident ZeRO-3 weight be a view of its partition instead of a
    second copy of it; returns how many weights now are.

    ZeRO-3 keeps each weight's partition in its flat groups (the fp32 masters too, after
    `share_fp32_masters`) and gathers the full weight into `param.data` for the forward and
    backward passes. The config keeps every weight resident on one process
    (`stage3_param_persistence_threshold`), so the model was held twice, and since each
    optimizer step releases every weight and gathers the resident ones again, each step
    allocated and copied a whole model's worth of memory (the measured step peak did not move:
    it lies elsewhere; benchmarks/zero3-tuning.md, 2026-12-07). With one process a partition is
    the whole weight (no padding), so gathering it is viewing it: each resident weight's
    `all_gather`, the call DeepSpeed gathers resident weights with after a step and after
    loading a checkpoint, is replaced by one that re-points the weight at its partition. The
    optimizer updates the partitions in place, so the views see every update; the arithmetic
    is the same. Several processes (real partitions) are left as they are."""
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    resident = list(getattr(optimizer, "persistent_parameters", None) or [])
    if dist.get_world_size() != 1 or not resident:
        return 0
    if any(p.ds_tensor is None or p.ds_tensor.numel() != p.ds_numel for p in resident):
        return 0  # a partition that is not the whole weight (offloaded, padded): keep copies

    def view_partitions(default, param_list=None, async_op=False, hierarchy=0):
        for p in param_list if param_list is not None else [default]:
            if p.ds_status == ZeroParamStatus.NOT_AVAILABLE:
                p.data = p.ds_tensor.data.view(p.ds_shape)
                p.ds_status = ZeroParamStatus.AVAILABLE
        return [] if async_op else None

    for p in resident:
        if p.ds_status == ZeroParamStatus.AVAILABLE:  # gathered already: drop the copy
            if not torch.equal(p.data, p.ds_tensor.data.view(p.ds_shape)):
                raise RuntimeError(f"ZeRO-3 weight {p.ds_id} differs from its partition")
            p.ds_status = ZeroParamStatus.NOT_AVAILABLE
        p.all_gather = functools.partial(view_partitions, p)
    # after initialisation DeepSpeed leaves them released, to be gathered by the first forward
    view_partitions(None, resident)
    return len(resident)


def without_module_hooks(optimizer, module: torch.nn.Module, resident_views: int) -> bool:
    """On one process, with every weight of `module` resident as a view of its partition
    (`weights_as_partitions`), take ZeRO-3's per-module hooks off; True when it did.

    ZeRO-3 hooks every sub-module: before and after its forward (fetch and release its weights,
    record the order for prefetching) and, through autograd functions wrapped around each
    sub-module's inputs and outputs, before and after its backward. Here there is nothing to
    fetch, release or prefetch: every weight stays where it is, and the gradients reach the
    optimizer through their own per-weight hooks, which stay. One ZeRO-3 engine at
    opt-125m-shape, SFT, steps alternating with and without the hooks: 1.09x of the step time
    with them; SmolLM2-135M: 1.13x (benchmarks/zero3-tuning.md, 2026-12-07 evening). They are
    taken off with DeepSpeed's own teardown. Several processes, or weights that are
    partitioned, offloaded or gathered as copies: kept."""
    offload = getattr(optimizer, "parameter_offload", None)
    if (
        dist.get_world_size() != 1
        or offload is None
        or resident_views != sum(1 for _ in module.parameters())
    ):
        return False
    offload._remove_module_hooks()
    return True


class DeepSpeedEngine:
    """The loop's view of a DeepSpeed engine: forward, backward, step, checkpoints, export."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        resources: ResourcesConfig,
        total_steps: int,
    ):
        import deepspeed

        self.device_type = pick_device(resources)
        self.precision = pick_precision(resources, self.device_type)
        init_distributed(self.device_type)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.config = deepspeed_config(
            optim,
            resources,
            self.world_size,
            self.precision,
            n_params=sum(p.numel() for p in model.parameters()),  # before ZeRO-3 partitions them
            device=self.device_type,
        )
        if resources.zero_stage == 3 and self.device_type == "cpu" and self.precision == "fp32":
            gradient_norms_in_fp32()
        optimizer = adamw(model, optim)
        schedule = warmup_cosine(total_steps, optim.warmup_ratio)
        self.engine, *_ = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            config=self.config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        self.device = self.engine.device
        self.zero_stage = resources.zero_stage
        release_shm_allreduce_name(self.rank)
        wrapped = self.engine.optimizer  # DeepSpeed's, around the AdamW above
        self.shared_master_groups = share_fp32_masters(wrapped)
        zero3 = resources.zero_stage == 3  # both reach into ZeRO-3's optimizer
        self.weights_as_partitions = weights_as_partitions(wrapped) if zero3 else 0
        self.steps_on_gradient_views = step_on_gradient_views(wrapped) if zero3 else False
        self.without_module_hooks = zero3 and without_module_hooks(
            wrapped, self.engine.module, self.weights_as_partitions
        )
        self.gradients_to_partitions = zero3 and gradients_go_straight(wrapped)
        self.adopted_gradients = None  # let go after each optimizer step, as torch's are
        if self.gradients_to_partitions:
            if AdoptedGradients.applies(wrapped):
                self.adopted_gradients = AdoptedGradients(wrapped)
            send_gradients_straight(wrapped, self.adopted_gradients)
        self.one_fused_step = None
        if self.adopted_gradients is not None and OneFusedStep.applies(
            wrapped, self.shared_master_groups
        ):
            self.one_fused_step = OneFusedStep(wrapped)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def forward(self, **batch):
        with tokens_only_feed_forward(self.module, batch.get("attention_mask")):
            return self.engine(**batch)

    def train(self, mode: bool = True) -> None:
        self.engine.train(mode)

    def backward(self, loss: torch.Tensor) -> None:
        # The loop already divides by the window's token/example totals across all ranks, so
        # DeepSpeed must not divide by gradient_accumulation_steps again; its data-parallel
        # averaging divides by world size, which the factor here undoes.
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def step(self) -> None:
        steps = self.engine.global_steps
        self.engine.step()  # a no-op for the optimizer except at accumulation boundaries
        if self.engine.global_steps == steps:
            return
        if self.adopted_gradients is not None:
            self.adopted_gradients.release()
        if self.without_module_hooks and self.engine.optimizer.overflow:
            # A step DeepSpeed skips (a non-finite gradient) releases every weight and returns
            # before gathering them again, which only its per-module hooks would then do.
            resident = self.engine.optimizer.persistent_parameters
            resident[0].all_gather(resident)

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float("nan")

    def save(self, ckpt_dir: Path, tag: str, client_state: dict, latest: bool = True) -> None:
        # "best" is saved with latest=False so that a resume continues from the newest step
        self.engine.save_checkpoint(
            str(ckpt_dir), tag=tag, client_state=client_state, save_latest=latest
        )

    def load(self, ckpt_dir: Path, tag: str | None = None) -> dict | None:
        path, client_state = self.engine.load_checkpoint(str(ckpt_dir), tag=tag)
        return client_state if path is not None else None

    def export(
        self,
        ckpt_dir: Path,
        tag: str,
        build_model: Callable[[], torch.nn.Module],
        save: Callable[[torch.nn.Module], None],
    ) -> None:
        """Consolidate checkpoint `tag` into a plain model on rank 0 and hand it to `save`."""
        self.barrier()
        if self.rank == 0:
            if self.zero_stage > 0:
                from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

                state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
            else:
                self.engine.load_checkpoint(str(ckpt_dir), tag=tag, load_optimizer_states=False)
                state = {k: v.detach().cpu().float() for k, v in self.module.state_dict().items()}
            model = build_model()
            # Frozen weights (LoRA's base) come from `build_model`, which loads them from the
            # starting checkpoint in fp32: the copies a checkpoint holds of frozen weights are
            # the training-precision module weights (bf16 on a GPU), not fp32 masters.
            frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
            state = {k: v for k, v in state.items() if k not in frozen}
            missing, unexpected = model.load_state_dict(state, strict=False)
            tied = set(getattr(model, "_tied_weights_keys", None) or [])
            # a LoRA model's keys carry peft's prefix; the tied head is the base model's
            missing = [k.removeprefix(PEFT_PREFIX) for k in missing if k not in frozen]
            if unexpected or any(k not in tied and not k.startswith("lm_head") for k in missing):
                raise RuntimeError(f"export of {tag}: missing {missing}, unexpected {unexpected}")
            model.tie_weights()
            save(model)
        self.barrier()

    def barrier(self) -> None:
        dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        values = values.to(self.device)
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values.cpu()

    def all_gather_object(self, obj) -> list:
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


class TorchEngine:
    """Plain single-process AdamW with the same schedule and clipping: the benchmark floor.

    It trains at the precision a DeepSpeed cell would (`pick_precision`): fp32 on CPU; bf16 on a
    GPU as torch's mixed precision (fp32 weights and optimizer, matrix products under bf16
    autocast), what DeepSpeed's bf16 (bf16 weights, fp32 masters) is compared with."""

    def __init__(
        self,
        model: torch.nn.Module,
        optim: OptimConfig,
        resources: ResourcesConfig,
        total_steps: int,
    ):
        self.device_type = pick_device(resources)
        self.device = torch.device(self.device_type)
        self.rank, self.world_size, self.zero_stage = 0, 1, None
        self.precision = pick_precision(resources, self.device_type)
        self.model = model.to(self.device)
        self.optim_cfg = optim
        self.optimizer = adamw(model, optim)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, optim.warmup_ratio)
        )
        self._micro = 0
        self._norm = float("nan")
        self.config = {"engine": "torch", "zero_stage": None}

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def forward(self, **batch):
        bf16 = self.precision == "bf16"
        with (
            torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16),
            tokens_only_feed_forward(self.model, batch.get("attention_mask")),
        ):
            return self.model(**batch)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self._micro += 1
        if self._micro % self.optim_cfg.grad_accum:
            return
        self._norm = float(
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.max_grad_norm)
        )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])

    def grad_norm(self) -> float:
        return self._norm

    def save(self, ckpt_dir: Path, tag: str, client_state: dict, latest: bool = True) -> None:
        raise NotImplementedError("TorchEngine is the benchmark floor; it does not checkpoint")

    def load(self, ckpt_dir: Path, tag: str | None = None) -> dict | None:
        return None

    def barrier(self) -> None: ...

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def all_gather_object(self, obj) -> list:
        return [obj]
