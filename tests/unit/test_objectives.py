"""Each method's training objective is its documented loss (orpo.losses), and the window
normalisation makes micro-batch shares add up to the full batch's loss."""

import pytest
import torch

from orpo import losses
from orpo.methods import METHODS, OTHER_METHODS
from orpo.training.objectives import OBJECTIVES, Norms, ObjectiveConfig, n_examples, nll_tokens

pytestmark = pytest.mark.unit
B, T, V = 3, 7, 11
PARAMS = {"simpo": {"beta": 2.0, "gamma": 0.5}, "cpo": {"beta": 0.1}, "ipo": {"tau": 0.1}}


def pair_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """B chosen rows, then B rejected rows; prompt of 2 tokens, responses of 2-5 tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (2 * B, T), generator=g)
    response = torch.zeros(2 * B, T, dtype=torch.long)
    for row, length in enumerate([3, 5, 2, 4, 2, 5]):
        response[row, 2 : 2 + length] = 1
    attention = (torch.arange(T) < 2 + response.sum(1, keepdim=True)).long()
    labels = torch.where(response.bool(), ids, torch.full_like(ids, -100))
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "labels": labels,
        "response_mask": response,
    }


class FixedLogits:
    """Stands in for the model: the same logits for a given batch, so the test can recompute."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    def __call__(self, **inputs):
        return self


def logits_for(batch, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(batch["input_ids"]), T, V, generator=g, dtype=torch.float64)


def config(stage: str, **extra) -> ObjectiveConfig:
    return ObjectiveConfig(stage=stage, params=PARAMS.get(stage, {}), **extra)


def full_norms(batch, stage: str) -> Norms:
    return Norms(tokens=nll_tokens(batch, stage, "response"), examples=n_examples(batch, stage))


def documented(stage: str, batch, logits, ref) -> torch.Tensor:
    """The method's loss over the batch, written from orpo.losses alone."""
    lab, mask = batch["labels"], batch["response_mask"]
    total = losses.sequence_logprobs(logits, lab, mask, "sum")
    mean = losses.sequence_logprobs(logits, lab, mask, "mean")
    chosen_nll = losses.sft_loss(logits[:B], lab[:B], mask[:B])
    p = PARAMS.get(stage, {})
    if stage == "sft":
        return losses.sft_loss(logits, lab, mask)
    if stage == "orpo":
        return losses.orpo_loss(chosen_nll, mean[:B], mean[B:], orpo_lambda=0.5)[0]
    if stage == "dpo":
        return losses.dpo_loss(total[:B], total[B:], ref[:, 0], ref[:, 1], 0.1).mean()
    if stage == "simpo":
        return losses.simpo_loss(mean[:B], mean[B:], p["beta"], p["gamma"]).mean()
    if stage == "cpo":
        return chosen_nll + losses.cpo_loss(total[:B], total[B:], p["beta"]).mean()
    if stage == "ipo":
        # the reference is cached as sums: per token, like the policy's mean log-probs
        n = mask[:, 1:].sum(-1).double()  # every label under the mask is a real token here
        ref_mean = ref[:, 0] / n[:B], ref[:, 1] / n[B:]
        return losses.ipo_loss(mean[:B], mean[B:], *ref_mean, p["tau"]).mean()
    raise AssertionError(stage)


def reference(seed: int = 2) -> torch.Tensor:
    return -5 * torch.rand(B, 2, generator=torch.Generator().manual_seed(seed)).double()


@pytest.mark.parametrize("stage", list(METHODS))
def test_objective_equals_the_documented_loss(stage):
    batch = pair_batch()
    if METHODS[stage].reads == "chosen":  # SFT trains on the chosen rows only
        batch = {k: v[:B] for k, v in batch.items()}
    logits = logits_for(batch)
    cfg = config(stage, orpo_lambda=0.5 if stage == "orpo" else None, dpo_beta=0.1)
    ref = reference()
    loss, stats = OBJECTIVES[stage](FixedLogits(logits), batch, full_norms(batch, stage), cfg, ref)
    expected = documented(stage, batch, logits, ref)
    torch.testing.assert_close(loss, expected.to(loss.dtype))
    assert torch.equal(stats["loss"], loss.detach())


@pytest.mark.parametrize("stage", list(METHODS))
def test_micro_batch_shares_add_up_to_the_full_batch_loss(stage):
    """Split into two micro-batches of unequal token counts, normalised by the window's totals,
    the shares sum to the loss of the whole batch (no mean of means)."""
    batch = pair_batch(seed=3)
    if METHODS[stage].reads == "chosen":
        batch = {k: v[:B] for k, v in batch.items()}
    logits, ref = logits_for(batch, seed=4), reference(seed=5)
    cfg = config(stage, orpo_lambda=0.5 if stage == "orpo" else None, dpo_beta=0.1)
    whole, _ = OBJECTIVES[stage](FixedLogits(logits), batch, full_norms(batch, stage), cfg, ref)

    n = len(batch["input_ids"]) // (1 if METHODS[stage].reads == "chosen" else 2)
    parts = [[0], [1, 2]]  # example indices: one, then two
    shares = []
    norms = full_norms(batch, stage)
    for rows in parts:
        if METHODS[stage].reads == "chosen":
            index = torch.tensor(rows)
        else:
            index = torch.tensor(rows + [r + n for r in rows])  # their chosen, then rejected
        micro = {k: v[index] for k, v in batch.items()}
        share, _ = OBJECTIVES[stage](
            FixedLogits(logits[index]), micro, norms, cfg, ref[torch.tensor(rows)]
        )
        shares.append(share)
    torch.testing.assert_close(sum(shares), whole)


def test_every_registered_method_has_an_objective_and_a_loss():
    for name, spec in METHODS.items():
        assert name in OBJECTIVES, name
        assert callable(getattr(losses, spec.loss)), spec.loss
    assert set(OTHER_METHODS) == set(PARAMS)


def test_an_empty_response_is_an_error_not_a_zero_log_prob():
    batch = pair_batch()
    batch["response_mask"][B] = 0  # the first rejected response has no token left
    cfg = config("orpo", orpo_lambda=0.1)
    with pytest.raises(ValueError, match="zero tokens"):
        OBJECTIVES["orpo"](FixedLogits(logits_for(batch)), batch, Norms(10, B), cfg)


@pytest.mark.parametrize("stage", list(METHODS))
def test_one_log_softmax_per_forward_pass(stage, monkeypatch):
    """The NLL and every per-sequence log-prob read one set of token log-probs: a (B, T, V)
    log-softmax is a tenth of a step at a 49k vocabulary and is held until backward."""
    calls = []
    real = torch.Tensor.log_softmax
    monkeypatch.setattr(
        torch.Tensor, "log_softmax", lambda t, *a, **k: calls.append(1) or real(t, *a, **k)
    )
    batch = pair_batch()
    if METHODS[stage].reads == "chosen":
        batch = {k: v[:B] for k, v in batch.items()}
    cfg = config(stage, orpo_lambda=0.5 if stage == "orpo" else None, dpo_beta=0.1)
    OBJECTIVES[stage](
        FixedLogits(logits_for(batch)), batch, full_norms(batch, stage), cfg, reference()
    )
    assert len(calls) == 1


@pytest.mark.parametrize("stage", ["sft", "orpo", "cpo"])
def test_full_scope_nll_also_trains_on_the_prompt(stage):
    """nll_scope="full" (TRL's choice): the NLL covers prompt and response tokens, the
    preference term still only the response."""
    batch = pair_batch()
    if stage == "sft":
        batch = {k: v[:B] for k, v in batch.items()}
    logits = logits_for(batch)
    cfg = config(stage, orpo_lambda=0.5 if stage == "orpo" else None, nll_scope="full")
    rows = slice(None) if stage == "sft" else slice(0, B)
    ids, attention = batch["input_ids"][rows], batch["attention_mask"][rows]
    nll, n = losses.token_nll(logits[rows], ids, attention)
    response_only = losses.token_nll(
        logits[rows], batch["labels"][rows], batch["response_mask"][rows]
    )
    assert n > response_only[1]  # the prompt tokens count too
    norms = Norms(tokens=float(n), examples=n_examples(batch, stage))
    _, stats = OBJECTIVES[stage](FixedLogits(logits), batch, norms, cfg, reference())
    torch.testing.assert_close(stats["nll"], nll.detach())


def tiny_opt(seed: int = 0):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    return OPTForCausalLM(
        OPTConfig(
            vocab_size=V, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
            word_embed_proj_dim=16, max_position_embeddings=T, dropout=0.0,
        )
    )  # fmt: skip


@pytest.mark.parametrize("stage", list(METHODS))
def test_training_forward_builds_no_key_value_cache(stage):
    """A Hugging Face causal LM copies every layer's keys and values into a cache unless told
    not to; no objective reads one, so none is built."""
    model = tiny_opt()
    assert model.config.use_cache  # the default this guards against
    outputs = []

    def forward(**inputs):
        outputs.append(model(**inputs))
        return outputs[-1]

    batch = pair_batch()
    if METHODS[stage].reads == "chosen":
        batch = {k: v[:B] for k, v in batch.items()}
    cfg = config(stage, orpo_lambda=0.5 if stage == "orpo" else None, dpo_beta=0.1)
    OBJECTIVES[stage](forward, batch, full_norms(batch, stage), cfg, reference().float())
    assert outputs and all("cache" not in out for out in outputs)


@pytest.mark.parametrize(
    ("stage", "scope"),
    [(stage, "response") for stage in METHODS] + [("orpo", "full"), ("pretrain", "full")],
)
def test_narrowed_logits_give_the_same_loss_stats_and_gradients(stage, scope):
    """With `narrow_logits` the model projects only the positions that predict a counted token
    (here half of them, or the non-padding ones of pretraining's plain texts); the loss, every
    stat and every gradient stay what they were. An NLL over prompt and response next to
    response log-probs needs every position, so "full" does not narrow there."""
    from orpo.models import narrows_logits

    model = tiny_opt().double()
    assert narrows_logits(model)
    batch = pair_batch()
    if stage == "pretrain" or METHODS[stage].reads == "chosen":
        batch = {k: v[:B] for k, v in batch.items()}
    # pretraining counts every token of its texts (scope "full" is its own)
    counted = (
        (batch["input_ids"], batch["attention_mask"])
        if stage == "pretrain"
        else (batch["labels"], batch["response_mask"])
    )
    shapes = []

    def forward(**inputs):
        out = model(**inputs)
        shapes.append(tuple(out.logits.shape))
        return out

    results = []
    for narrow in (False, True):
        model.zero_grad()
        cfg = config(
            stage,
            orpo_lambda=0.5 if stage == "orpo" else None,
            dpo_beta=0.1,
            nll_scope=scope,
            narrow_logits=narrow,
        )
        loss, stats = OBJECTIVES[stage](forward, batch, full_norms(batch, stage), cfg, reference())
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), stats, grads))
    rows = len(batch["input_ids"])
    scored = int(losses.scored_positions(*counted).sum())
    assert shapes[0] == (rows, T, V)
    full_logits = scope == "full" and stage != "pretrain"
    assert shapes[1] == ((rows, T, V) if full_logits else (scored, V))
    assert scored < rows * T if stage == "pretrain" else scored <= rows * T / 2
    (loss_a, stats_a, grads_a), (loss_b, stats_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    assert stats_a.keys() == stats_b.keys()
    for key in stats_a:
        torch.testing.assert_close(stats_b[key], stats_a[key], msg=key)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a)
