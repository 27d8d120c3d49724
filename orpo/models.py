"""Models and tokenizers: tiny OPT presets for CPU runs (and one small Llama), the paper's OPT
models by hub id, any causal LM by path.

Two ways to name a model, one function to build it:

- a preset (`PRESETS`, e.g. "opt-tiny"): an OPT architecture (the paper's family) with random
  weights, built from a config under a fixed seed, its vocabulary taken from a tokenizer trained
  locally with `train_tokenizer`. This is the runnable default on machines without a model hub.
- anything else: a hub id (`PAPER_MODELS` aliases such as "opt-125m" resolve to
  "facebook/opt-125m") or a local directory, loaded with `from_pretrained` from safetensors,
  `trust_remote_code` off unless the caller asks.

Pitfall handled here: a tokenizer whose pad token is its EOS token (OPT, Llama, ...) would mask
every EOS label when padding is masked, so the model never learns to stop. Both tokenizer
functions guarantee a dedicated pad token; `build_model` grows the embeddings to fit it.
"""

from __future__ import annotations

import inspect
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    LlamaConfig,
    OPTConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

ModelKind = Literal["causal-lm", "reward"]

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]  # ids 0..3 in a trained tokenizer

# Randomly initialised OPT shapes that train in seconds to minutes on 2 CPU cores (fp32).
# Parameter counts measured with `count_parameters` for the causal LM, with a 512-token trained
# vocabulary (`train_tokenizer` default; embeddings are tied to the LM head, so counted once):
#   opt-tiny      249,344  (~0.25M)
#   opt-small     891,904  (~0.89M)
#   opt-medium  3,356,672  (~3.4M)   -> medium / tiny = 13.5x
# The reward kind swaps the LM head for a 1-output score layer: + hidden_size parameters.
_SHARED_PRESET_FIELDS = dict(
    max_position_embeddings=256,
    do_layer_norm_before=True,  # pre-LN, as in every OPT except 350m; stable at init
    dropout=0.0,  # dropout only adds noise to tiny-model comparisons
    attention_dropout=0.0,
    activation_dropout=0.0,
    layerdrop=0.0,
    activation_function="relu",
)
PRESETS: dict[str, dict] = {
    "opt-tiny": dict(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=2, ffn_dim=256,
        **_SHARED_PRESET_FIELDS,
    ),
    "opt-small": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=4, ffn_dim=512,
        **_SHARED_PRESET_FIELDS,
    ),
    "opt-medium": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=1024,
        **_SHARED_PRESET_FIELDS,
    ),
}  # fmt: skip

# The paper's OPT-125M and OPT-350M shapes (facebook/opt-*'s configs, dropout off), randomly
# initialised: GPU-scale sequence lengths and throughput without a hub (experiments/gpu-smoke).
SHAPE_PRESETS: dict[str, dict] = {
    "opt-125m-shape": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, ffn_dim=3072,
        word_embed_proj_dim=768, max_position_embeddings=2048, do_layer_norm_before=True,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        activation_function="relu",
    ),
    "opt-350m-shape": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096,
        word_embed_proj_dim=512, max_position_embeddings=2048, do_layer_norm_before=False,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, layerdrop=0.0,
        activation_function="relu",
    ),
}  # fmt: skip

# A small Llama (rotary positions, RMSNorm, grouped-query attention, SwiGLU, tied embeddings):
# the architecture of SmolLM2 and most current checkpoints, so every path is also exercised on
# a non-OPT model without a hub. Not part of the OPT size ladder above.
LLAMA_PRESETS: dict[str, dict] = {
    "llama-tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, max_position_embeddings=256, tie_word_embeddings=True,
        attention_dropout=0.0,
    ),
}  # fmt: skip

# The paper's OPT sizes (Tables 2-3). Hub ids are also accepted as they are.
PAPER_MODELS: dict[str, str] = {
    "opt-125m": "facebook/opt-125m",
    "opt-350m": "facebook/opt-350m",
    "opt-1.3b": "facebook/opt-1.3b",
}


def is_preset(name: str) -> bool:
    return name in PRESETS or name in SHAPE_PRESETS or name in LLAMA_PRESETS


def resolve_model_name(name_or_path: str) -> str:
    """Paper alias -> hub id; presets, other hub ids and local paths pass through unchanged."""
    return PAPER_MODELS.get(name_or_path, name_or_path)


# --- tokenizers -------------------------------------------------------------------------------


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` (deterministic for the same texts).

    Byte-level means every string round-trips, unicode included, with no `<unk>` in practice.
    Special tokens get ids 0..3: `<pad>`, `<s>` (bos), `</s>` (eos), `<unk>`; pad != eos.
    No special tokens are added on encode: `orpo.data.tokenize` places BOS and EOS itself.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size {vocab_size} < 260 (4 special tokens + 256 bytes)")
    tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="right",
        # The default clean-up rewrites " ." as "." on decode: text would not round-trip.
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(
    name_or_path: str, *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """`AutoTokenizer.from_pretrained`, plus a dedicated `<pad>` when pad is missing or == eos.

    Adding `<pad>` grows the vocabulary by one: build the model with `build_model`, which
    resizes the embeddings to `len(tokenizer)`.
    """
    if is_preset(name_or_path):
        raise ValueError(
            f"{name_or_path!r} is a model preset and has no tokenizer: use train_tokenizer()"
        )
    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model_name(name_or_path), trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


# --- models -----------------------------------------------------------------------------------


def preset_config(name: str, tokenizer: PreTrainedTokenizerBase) -> OPTConfig | LlamaConfig:
    """The config of preset `name`, vocabulary and special-token ids from `tokenizer`."""
    if not is_preset(name):
        known = sorted([*PRESETS, *SHAPE_PRESETS, *LLAMA_PRESETS])
        raise KeyError(f"unknown preset {name!r}; presets: {known}")
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if name in LLAMA_PRESETS:
        return LlamaConfig(**ids, **LLAMA_PRESETS[name])
    if name in SHAPE_PRESETS:
        return OPTConfig(**ids, **SHAPE_PRESETS[name])
    fields = PRESETS[name]  # no projection between embedding and body
    return OPTConfig(**ids, word_embed_proj_dim=fields["hidden_size"], **fields)


def build_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    kind: ModelKind = "causal-lm",
    seed: int = 0,
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
    keep_dropout: bool = False,
) -> PreTrainedModel:
    """A causal LM (policy) or a 1-output sequence classifier (Bradley-Terry reward model).

    Presets are randomly initialised from `seed`; anything else loads from safetensors. A reward
    model may start from a causal-LM checkpoint: the base weights load and the `score` head is
    newly initialised (also from `seed`). The global torch RNG is left untouched.

    Dropout is switched off unless `keep_dropout`: hub OPT configs carry 0.1, and a policy
    trained with it differs from its eval-mode reference (DPO) already at step 0, with a
    length-dependent bias in summed log-probs.
    """
    if kind not in ("causal-lm", "reward"):
        raise ValueError(f"kind must be 'causal-lm' or 'reward', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if is_preset(name_or_path):
            config = preset_config(name_or_path, tokenizer)
            if kind == "reward":
                config.num_labels = 1
                model = AutoModelForSequenceClassification.from_config(config)
            else:
                model = AutoModelForCausalLM.from_config(config)
        else:
            auto_class = (
                AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
            )
            source = resolve_model_name(name_or_path)
            config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
            if kind == "reward":
                config.num_labels = 1
            if not keep_dropout:
                without_dropout(config)
            model = _from_pretrained(
                auto_class,
                source,
                config=config,
                trust_remote_code=trust_remote_code,
                dtype=dtype,
            )
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
    _set_special_token_ids(model, tokenizer)
    return model.to(dtype)


# Config fields that hold a dropout probability, across the architectures transformers ships
# (OPT, Llama/Mistral/Qwen, GPT-2, BERT-style reward models).
DROPOUT_FIELDS = (
    "dropout", "attention_dropout", "activation_dropout", "hidden_dropout", "layerdrop",
    "attn_pdrop", "resid_pdrop", "embd_pdrop", "summary_first_dropout", "classifier_dropout",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "mlp_dropout", "embedding_dropout",
)  # fmt: skip


def without_dropout(config) -> list[str]:
    """Set every non-zero dropout probability of `config` to 0 (before the model is built:
    layers copy these floats at construction). Returns the fields changed."""
    changed = []
    for name in DROPOUT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, float) and value > 0:
            setattr(config, name, 0.0)
            changed.append(name)
    return changed


def _set_special_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make config, generation config and the embedding's padding_idx agree with the tokenizer.

    The reward model needs `config.pad_token_id`: sequence classification scores the last token
    that is not pad, so a wrong pad id would score the wrong position. `padding_idx` gets no
    gradient: left on a checkpoint's old pad id (EOS in some), EOS would never be trained.
    """
    ids = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    for key, value in ids.items():
        setattr(model.config, key, value)
        if getattr(model, "generation_config", None) is not None:
            setattr(model.generation_config, key, value)
    embeddings = model.get_input_embeddings()
    if isinstance(embeddings, torch.nn.Embedding) and tokenizer.pad_token_id is not None:
        embeddings.padding_idx = tokenizer.pad_token_id


def save_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Write `model.safetensors`, the config and the tokenizer into `out_dir`; return it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def load_model(
    path: str | Path,
    *,
    kind: ModelKind = "causal-lm",
    trust_remote_code: bool = False,
    dtype: torch.dtype = torch.float32,
) -> PreTrainedModel:
    """Reload a model written by `save_model` (safetensors only). Tokenizer: `load_tokenizer`."""
    auto_class = AutoModelForCausalLM if kind == "causal-lm" else AutoModelForSequenceClassification
    return _from_pretrained(auto_class, str(path), trust_remote_code=trust_remote_code, dtype=dtype)


# transformers' loading is not thread-safe: two models loaded at once in one process (Prefect
# runs tasks in threads) came back with `lm_head.weight` "MISSING, newly initialized" instead of
# tied to the embeddings, i.e. a random output layer. Loads are serialised here.
_LOAD_LOCK = threading.Lock()


def _from_pretrained(auto_class, name_or_path: str, **kwargs) -> PreTrainedModel:
    with _LOAD_LOCK:
        return auto_class.from_pretrained(name_or_path, use_safetensors=True, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied embedding and LM head counted once)."""
    return sum(p.numel() for p in model.parameters())


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def narrows_logits(model: torch.nn.Module) -> bool:
    """Whether the model's forward takes a (B, T) bool `logits_to_keep` and returns logits for
    the set positions only, (N, V): transformers' causal LMs whose forward has the argument and
    slices with the library's shared `slice_logits_to_keep`, which reads a bool mask that way
    (a model with its own slicing would read it otherwise, so it gets every position's logits).
    Looks through LoRA's wrapper to the model it wraps."""
    from transformers import modeling_utils

    shared = getattr(modeling_utils, "slice_logits_to_keep", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_it = "logits_to_keep" in inspect.signature(base.forward).parameters
    own_module = sys.modules.get(type(base).__module__)
    return (
        shared is not None
        and takes_it
        and getattr(own_module, "slice_logits_to_keep", None) is shared
    )


def add_lora(model: PreTrainedModel, lora) -> torch.nn.Module:
    """`model` with LoRA adapters (peft) on `lora.target_modules` (peft's default for the
    architecture when None): every original weight frozen, the adapters' B initialised to zero,
    so the wrapped model computes exactly what `model` did until the first update. `lora` is an
    `orpo.config.LoraConfig`."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def merge_lora(model: torch.nn.Module) -> PreTrainedModel:
    """The plain model with the adapters' update folded into its weights (for export)."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
