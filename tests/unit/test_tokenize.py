"""Chat formatting, truncation policy and the 2B-row preference batch, on hand-built pairs."""

from __future__ import annotations

import copy

import pytest
import torch

from orpo.data.schema import PreferenceExample
from orpo.data.tokenize import (
    IGNORE_INDEX,
    SIMPLE_CHAT_TEMPLATE,
    EncodedPair,
    TruncationStats,
    collate_chosen,
    collate_pairs,
    collate_texts,
    encode_pair,
    encode_pairs,
    encode_prompt,
    format_prompt,
    prompt_text_within,
    reward_inputs,
)
from orpo.models import build_model, train_tokenizer

pytestmark = pytest.mark.unit

CORPUS = [
    "<|system|>\nBe brief.\n<|user|>\nWhat is 12 plus 30?\n<|assistant|>\nThe answer is 42.",
    "<|user|>\nSort: pear, apple, fig.\n<|assistant|>\napple, fig, pear\n<|user|>\nReverse it.",
    "Unicode: café, Straße, 日本語, 🙂.",
] * 25

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Sort: pear, apple, fig."},
    {"role": "assistant", "content": "apple, fig, pear"},
    {"role": "user", "content": "Reverse it."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=320)


def example(prompt_text="What is 12 plus 30?", chosen="42", rejected="The answer is 41.", id="ex"):
    return PreferenceExample(
        id=id, prompt=[{"role": "user", "content": prompt_text}], chosen=chosen, rejected=rejected
    )


def pair(prompt, chosen, rejected, id="p"):
    """An EncodedPair from raw ids, for collation tests that need exact positions."""
    return EncodedPair(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, example_id=id)


# --- chat formatting ----------------------------------------------------------------------------


def test_simple_template_renders_multi_turn(tokenizer):
    assert not tokenizer.chat_template
    assert format_prompt(tokenizer, MULTI_TURN) == (
        "<|system|>\nBe brief.\n"
        "<|user|>\nSort: pear, apple, fig.\n"
        "<|assistant|>\napple, fig, pear\n"
        "<|user|>\nReverse it.\n"
        "<|assistant|>\n"
    )


def test_tokenizer_chat_template_is_used_and_simple_template_jinja_matches(tokenizer):
    fallback = format_prompt(tokenizer, MULTI_TURN)
    templated = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)
    templated.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}>"
    assert format_prompt(templated, MULTI_TURN) == (
        "[Be brief.][Sort: pear, apple, fig.][apple, fig, pear][Reverse it.]>"
    )
    templated.chat_template = SIMPLE_CHAT_TEMPLATE
    assert format_prompt(templated, MULTI_TURN) == fallback


def test_prompt_starts_with_bos_under_simple_template(tokenizer):
    ids = encode_prompt(tokenizer, MULTI_TURN)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids[1:]) == format_prompt(tokenizer, MULTI_TURN)


@pytest.mark.parametrize(
    "chat_template", [None, "{% for m in messages %}[{{ m['content'] }}]{% endfor %}>"]
)
def test_a_prompt_as_text_is_cut_where_its_tokens_are(tokenizer, chat_template):
    """What `orpo bench` hands TRL: the text of the prompt tokens ours trains on."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = chat_template
    whole = encode_prompt(tok, MULTI_TURN)
    assert prompt_text_within(tok, MULTI_TURN, len(whole)) == format_prompt(tok, MULTI_TURN)
    limit = len(whole) // 2
    ours = encode_pair(
        tok, PreferenceExample(id="m", prompt=MULTI_TURN, chosen="ok", rejected="no"), 10**3, limit
    ).prompt_ids
    text = prompt_text_within(tok, MULTI_TURN, limit)
    simple_bos = [tok.bos_token_id] if chat_template is None else []
    assert simple_bos + tok.encode(text, add_special_tokens=False) == ours
    assert len(ours) == limit and text != format_prompt(tok, MULTI_TURN)


# --- encoding and truncation --------------------------------------------------------------------


def test_encode_pair_without_truncation(tokenizer):
    stats = TruncationStats()
    encoded = encode_pair(tokenizer, example(), max_length=128, max_prompt_length=64, stats=stats)
    eos = tokenizer.eos_token_id
    assert encoded.example_id == "ex"
    assert encoded.chosen_ids[-1] == eos and encoded.rejected_ids[-1] == eos
    assert tokenizer.decode(encoded.chosen_ids[:-1]) == "42"
    assert tokenizer.decode(encoded.rejected_ids[:-1]) == "The answer is 41."
    assert (
        tokenizer.decode(encoded.prompt_ids[1:]) == "<|user|>\nWhat is 12 plus 30?\n<|assistant|>\n"
    )
    assert stats == TruncationStats(total=1, prompt_truncated=0, response_truncated=0, dropped=0)


def test_long_prompt_is_truncated_from_the_left_keeping_bos(tokenizer):
    messages = [
        {"role": "user", "content": "an old turn " * 30},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Reverse it."},
    ]
    ex = PreferenceExample(id="long", prompt=messages, chosen="fig", rejected="pear")
    full = encode_prompt(tokenizer, messages)
    stats = TruncationStats()
    encoded = encode_pair(tokenizer, ex, max_length=64, max_prompt_length=20, stats=stats)
    assert len(full) > 20 and len(encoded.prompt_ids) == 20
    assert encoded.prompt_ids[0] == tokenizer.bos_token_id
    assert encoded.prompt_ids[1:] == full[-19:]  # the latest tokens survive
    assert tokenizer.decode(encoded.prompt_ids).endswith("<|user|>\nReverse it.\n<|assistant|>\n")
    assert (stats.prompt_truncated, stats.response_truncated, stats.dropped) == (1, 0, 0)


def test_long_response_is_truncated_on_the_right_keeping_eos(tokenizer):
    ex = example(chosen="apple, fig, pear " * 20, rejected="no")
    stats = TruncationStats()
    encoded = encode_pair(tokenizer, ex, max_length=40, max_prompt_length=30, stats=stats)
    assert len(encoded.prompt_ids) + len(encoded.chosen_ids) == 40
    assert encoded.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(encoded.chosen_ids[:-1]).startswith("apple, fig, pear")
    assert encoded.rejected_ids == tokenizer.encode("no", add_special_tokens=False) + [
        tokenizer.eos_token_id
    ]
    assert (stats.prompt_truncated, stats.response_truncated, stats.dropped) == (0, 1, 0)


def test_pair_without_room_for_a_response_is_dropped(tokenizer):
    prompt_length = len(encode_prompt(tokenizer, example().prompt))
    stats = TruncationStats()
    # Room for EOS alone is not enough: one response token + EOS is the minimum.
    assert encode_pair(tokenizer, example(), prompt_length + 1, prompt_length, stats) is None
    kept = encode_pair(tokenizer, example(), prompt_length + 2, prompt_length, stats)
    assert len(kept.chosen_ids) == 2 and kept.chosen_ids[-1] == tokenizer.eos_token_id
    assert (stats.total, stats.dropped, stats.response_truncated) == (2, 1, 1)


def test_encode_pairs_collects_stats(tokenizer):
    examples = [
        example(id="fits"),
        example(chosen="apple, fig, pear " * 20, id="long-response"),
        example(prompt_text="an old turn " * 40, id="long-prompt"),
    ]
    # The long prompt is cut to 39 tokens, leaving 1 < 2 tokens of room: dropped.
    encoded, stats = encode_pairs(tokenizer, examples, max_length=40, max_prompt_length=39)
    assert [p.example_id for p in encoded] == ["fits", "long-response"]
    assert stats == TruncationStats(total=3, prompt_truncated=0, response_truncated=1, dropped=1)
    assert stats.summary().startswith("3 pairs, 2 kept")


# --- collation ----------------------------------------------------------------------------------

PAD = 0
EOS = 2


def test_collate_pairs_puts_chosen_rows_first_then_rejected():
    pairs = [
        pair([1, 10, 11], [20, EOS], [30, 31, 32, EOS]),
        pair([1, 12], [21, 22, EOS], [33, EOS]),
    ]
    batch = collate_pairs(pairs, pad_id=PAD)
    assert batch["input_ids"].tolist() == [
        [1, 10, 11, 20, EOS, PAD, PAD],  # pair 0 chosen
        [1, 12, 21, 22, EOS, PAD, PAD],  # pair 1 chosen
        [1, 10, 11, 30, 31, 32, EOS],  # pair 0 rejected
        [1, 12, 33, EOS, PAD, PAD, PAD],  # pair 1 rejected
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 0, 0, 0],
    ]


def test_labels_mask_prompt_and_padding_and_keep_eos():
    x = IGNORE_INDEX
    batch = collate_pairs([pair([1, 10, 11], [20, EOS], [30, 31, 32, EOS])], pad_id=PAD)
    assert batch["labels"].tolist() == [
        [x, x, x, 20, EOS, x, x],
        [x, x, x, 30, 31, 32, EOS],
    ]
    assert batch["response_mask"].tolist() == [
        [False, False, False, True, True, False, False],
        [False, False, False, True, True, True, True],
    ]


def test_eos_stays_a_label_even_if_pad_equals_eos():
    # Masks come from positions, not from comparing ids with pad_id.
    batch = collate_pairs([pair([1, 10], [EOS], [30, EOS])], pad_id=EOS)
    x = IGNORE_INDEX
    assert batch["labels"].tolist() == [[x, x, EOS, x], [x, x, 30, EOS]]


def test_collate_shapes_and_dtypes(tokenizer):
    examples = [example(id=str(i), chosen="42 " * (i + 1)) for i in range(3)]
    pairs, _ = encode_pairs(tokenizer, examples, max_length=64, max_prompt_length=32)
    batch = collate_pairs(pairs, pad_id=tokenizer.pad_token_id)
    longest = max(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs)
    for key in ("input_ids", "attention_mask", "labels", "response_mask"):
        assert batch[key].shape == (6, longest), key  # (2B, T)
    assert batch["input_ids"].dtype == torch.long and batch["labels"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long
    assert batch["response_mask"].dtype == torch.bool
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 6  # one EOS label per row


def test_collate_chosen_is_the_chosen_half():
    pairs = [
        pair([1, 10, 11], [20, EOS], [30, 31, 32, EOS]),
        pair([1, 12], [21, 22, EOS], [33, EOS]),
    ]
    both, chosen = collate_pairs(pairs, PAD), collate_chosen(pairs, PAD)
    width = chosen["input_ids"].shape[1]
    assert chosen["input_ids"].shape == (2, 5)  # (B, T): T from the chosen rows only
    for key in both:
        assert torch.equal(chosen[key], both[key][:2, :width]), key


def test_collate_texts_labels_every_real_token():
    batch = collate_texts([[1, 5, 6, EOS], [1, 7]], pad_id=PAD)
    assert batch["labels"].tolist() == [[1, 5, 6, EOS], [1, 7, IGNORE_INDEX, IGNORE_INDEX]]
    assert torch.equal(batch["response_mask"], batch["attention_mask"].bool())


def test_reward_inputs_score_each_rows_eos(tokenizer):
    pairs, _ = encode_pairs(
        tokenizer, [example(chosen="42", rejected="The answer is 41. " * 3)], 64, 32
    )
    inputs = reward_inputs(pairs, pad_id=tokenizer.pad_token_id)
    assert set(inputs) == {"input_ids", "attention_mask"}
    assert inputs["input_ids"].shape[0] == 2
    model = build_model("opt-tiny", tokenizer, kind="reward").eval()
    with torch.no_grad():
        scores = model(**inputs).logits[:, 0]  # (2B,) chosen first
        chosen_alone = torch.tensor([pairs[0].prompt_ids + pairs[0].chosen_ids])
        expected = model(input_ids=chosen_alone).logits[0, 0]
    # The chosen row is right-padded; OPT finds its EOS through config.pad_token_id.
    torch.testing.assert_close(scores[0], expected)
