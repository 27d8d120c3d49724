"""Presets, tokenizers, building, saving and reloading models: all offline, tiny, CPU."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from orpo.models import (
    PAPER_MODELS,
    PRESETS,
    build_model,
    count_parameters,
    is_preset,
    load_model,
    load_tokenizer,
    preset_config,
    resolve_model_name,
    save_model,
    train_tokenizer,
)

pytestmark = pytest.mark.unit

CORPUS = [
    "<|user|>\nWhat is 12 plus 30?\n<|assistant|>\nThe answer is 42.",
    "<|user|>\nSort the list: pear, apple, fig.\n<|assistant|>\napple, fig, pear",
    "Unicode too: café, naïve, Straße, 日本語, emoji 🙂 and math ∑.",
    "Reverse the word 'lantern' -> 'nretnal'. Done .",
] * 25


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


def _batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """Right-padded ids + mask, built by hand so this file tests models.py alone."""
    rows = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


# --- presets ----------------------------------------------------------------------------------


def test_presets_span_ten_x_in_parameters(tokenizer):
    counts = [count_parameters(build_model(name, tokenizer)) for name in PRESETS]
    assert len(counts) >= 3
    assert counts == sorted(set(counts)), f"not strictly increasing: {counts}"
    assert counts[-1] / counts[0] >= 10, counts


def test_preset_config_takes_vocab_and_special_ids_from_tokenizer(tokenizer):
    config = preset_config("opt-tiny", tokenizer)
    assert config.vocab_size == len(tokenizer)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.max_position_embeddings == 256
    assert config.do_layer_norm_before is True
    assert config.word_embed_proj_dim == config.hidden_size
    assert config.dropout == 0.0


def test_names_resolve(tokenizer):
    assert is_preset("opt-small") and not is_preset("opt-125m")
    assert resolve_model_name("opt-1.3b") == "facebook/opt-1.3b"
    assert resolve_model_name("facebook/opt-350m") == "facebook/opt-350m"
    assert resolve_model_name("/some/local/path") == "/some/local/path"
    assert set(PAPER_MODELS) == {"opt-125m", "opt-350m", "opt-1.3b"}
    with pytest.raises(ValueError, match="train_tokenizer"):
        load_tokenizer("opt-tiny")
    with pytest.raises(ValueError, match="kind"):
        build_model("opt-tiny", tokenizer, kind="policy")


# --- forward passes -----------------------------------------------------------------------------


def test_causal_lm_forward(tokenizer):
    model = build_model("opt-tiny", tokenizer).eval()
    batch = _batch(tokenizer, ["The answer is 42.", "apple, fig"])
    out = model(**batch, labels=batch["input_ids"])
    assert out.logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))  # (B, T, V)
    assert torch.isfinite(out.loss)


def test_reward_forward_scores_last_real_token(tokenizer):
    model = build_model("opt-tiny", tokenizer, kind="reward").eval()
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    texts = ["The answer is 42.", "apple"]
    with torch.no_grad():
        padded = model(**_batch(tokenizer, texts)).logits  # (2, 1)
        alone = model(**_batch(tokenizer, texts[1:])).logits  # (1, 1), no padding
    assert padded.shape == (2, 1)
    # Row 1 is right-padded in the batch: its score must come from its EOS, not from a pad.
    torch.testing.assert_close(padded[1], alone[0])


def test_same_seed_same_weights_and_global_rng_untouched(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("opt-tiny", tokenizer, seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    b = build_model("opt-tiny", tokenizer, seed=7)
    c = build_model("opt-tiny", tokenizer, seed=8)
    wa, wb, wc = (m.model.decoder.layers[0].fc1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


# --- saving and loading -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["causal-lm", "reward"])
def test_save_load_round_trip(tokenizer, tmp_path, kind):
    model = build_model("opt-tiny", tokenizer, kind=kind).eval()
    out = save_model(model, tokenizer, tmp_path / "ckpt")
    assert (out / "model.safetensors").is_file()
    assert not list(out.glob("*.bin"))

    reloaded = load_model(out, kind=kind).eval()
    batch = _batch(tokenizer, ["The answer is 42.", "apple"])
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)
    reloaded_tokenizer = load_tokenizer(str(out))
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    assert reloaded_tokenizer.encode("café 🙂") == tokenizer.encode("café 🙂")


def test_reward_model_starts_from_causal_lm_checkpoint(tokenizer, tmp_path):
    policy = build_model("opt-tiny", tokenizer)
    path = save_model(policy, tokenizer, tmp_path / "base")
    reward = build_model(str(path), tokenizer, kind="reward").eval()
    assert torch.equal(
        reward.model.decoder.layers[0].fc1.weight, policy.model.decoder.layers[0].fc1.weight
    )
    with torch.no_grad():
        scores = reward(**_batch(tokenizer, ["apple", "The answer is 42."])).logits
    assert scores.shape == (2, 1) and torch.isfinite(scores).all()


# --- tokenizers ---------------------------------------------------------------------------------


def test_trained_tokenizer_has_dedicated_pad(tokenizer):
    assert tokenizer.pad_token == "<pad>" and tokenizer.bos_token == "<s>"
    assert tokenizer.eos_token == "</s>" and tokenizer.unk_token == "<unk>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) <= 320


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 42 .",
        "café, naïve, Straße",
        "日本語 🙂 ∑ never seen: Ω ж 🚀",
        "  two\n\nlines ",
    ],
)
def test_trained_tokenizer_round_trips_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids) == text


def test_trained_tokenizer_is_deterministic():
    a, b = train_tokenizer(CORPUS, vocab_size=320), train_tokenizer(CORPUS, vocab_size=320)
    assert a.get_vocab() == b.get_vocab()
    text = "What is 12 plus 30? The answer is 42."
    assert a.encode(text) == b.encode(text)


def _save_tokenizer_with_pad_equal_to_eos(directory) -> int:
    """A hub-style tokenizer (think OPT/Llama): no <pad> in its vocabulary, pad set to eos."""
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(CORPUS, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    assert wrapped.pad_token_id == wrapped.eos_token_id
    wrapped.save_pretrained(directory)
    return len(wrapped)


def test_load_tokenizer_adds_pad_when_pad_is_eos_and_build_model_resizes(tmp_path):
    vocab = _save_tokenizer_with_pad_equal_to_eos(tmp_path / "tok")
    original = load_tokenizer(str(tmp_path / "tok"))
    assert original.pad_token == "<pad>" and original.pad_token_id != original.eos_token_id
    assert len(original) == vocab + 1 and original.pad_token_id == vocab

    # A checkpoint whose embeddings know nothing of <pad>: vocab rows only.
    base_tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tmp_path / "tok"))
    base = build_model("opt-tiny", base_tokenizer)
    assert base.get_input_embeddings().num_embeddings == vocab
    base.save_pretrained(tmp_path / "base")

    model = build_model(str(tmp_path / "base"), original)
    assert model.get_input_embeddings().num_embeddings == vocab + 1
    assert model.config.pad_token_id == original.pad_token_id
    assert model.get_input_embeddings().padding_idx == original.pad_token_id
    with torch.no_grad():
        logits = model(**_batch(original, ["apple", "The answer is 42."])).logits
    assert logits.shape[-1] == vocab + 1


def test_loads_from_several_threads_keep_the_output_layer_tied(tokenizer, tmp_path):
    """Regression: Prefect runs tasks in threads; concurrent `from_pretrained` calls returned
    models whose lm_head was "MISSING, newly initialized" (random) instead of tied."""
    import threading

    save_model(build_model("opt-tiny", tokenizer, seed=0), tokenizer, tmp_path / "m")
    tied: list[bool] = []

    def load() -> None:
        model = load_model(tmp_path / "m")
        tied.append(torch.equal(model.lm_head.weight, model.get_input_embeddings().weight))

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tied == [True] * 6


def test_narrows_logits_for_causal_lms_that_slice_with_the_shared_helper():
    """transformers' causal LMs read a bool `logits_to_keep` as "these positions only"; a
    reward model's head has no such argument, and LoRA's wrapper is looked through."""
    from transformers import OPTConfig, OPTForCausalLM, OPTForSequenceClassification

    from orpo.config import LoraConfig
    from orpo.models import add_lora, narrows_logits

    config = OPTConfig(
        vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, ffn_dim=32,
        word_embed_proj_dim=16, max_position_embeddings=16,
    )  # fmt: skip
    assert narrows_logits(OPTForCausalLM(config))
    assert not narrows_logits(OPTForSequenceClassification(config))
    assert narrows_logits(add_lora(OPTForCausalLM(config), LoraConfig(r=2)))
