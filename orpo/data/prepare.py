"""Prepare an experiment's data once: train/eval/test JSONL in the one schema, the tokenizer the
presets use, and a manifest (counts, what cleaning dropped, a content version).

Written into a temporary folder and renamed into place, so a failure leaves nothing half-written;
an existing folder with the same data config is reused (the data are deterministic).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from orpo.config import DataConfig, Experiment
from orpo.data.adapters import load_preference_dataset
from orpo.data.clean import clean_pairs
from orpo.data.schema import PreferenceExample, read_jsonl, write_jsonl
from orpo.data.synthetic import corpus_texts, generate_suite
from orpo.data.tokenize import render_simple_template
from orpo.models import is_preset, train_tokenizer

SPLITS = ("train", "eval", "test")


def _load_real(data: DataConfig) -> tuple[dict[str, list[PreferenceExample]], dict]:
    train, report = clean_pairs(
        load_preference_dataset(data.source, data.path, data.train_split, data.limit)
    )
    test_source = data.test_path or data.path
    test, test_report = clean_pairs(
        load_preference_dataset(data.source, test_source, data.test_split)
    )
    rng = random.Random(0)  # eval pairs carved from train, deterministically
    rng.shuffle(train)
    if len(train) <= data.eval_size:
        raise ValueError(
            f"data.path {data.path}: {len(train)} pairs after cleaning, not enough "
            f"for data.eval_size={data.eval_size} plus training pairs"
        )
    splits = {
        "train": train[data.eval_size :],
        "eval": train[: data.eval_size],
        "test": test[: data.test_size],
    }
    return splits, {"train": report.__dict__, "test": test_report.__dict__}


def load_splits(data: DataConfig) -> tuple[dict[str, list[PreferenceExample]], dict]:
    if data.source == "synthetic":
        s = data.synthetic
        return generate_suite(s.n_train, s.n_eval, s.n_test, seed=s.seed, families=s.families), {}
    return _load_real(data)


def tokenizer_corpus(examples: list[PreferenceExample]) -> list[str]:
    """Texts the preset tokenizer learns from: responses plus prompts as the chat template
    renders them, so the template's markers become single tokens."""
    return corpus_texts(examples) + [render_simple_template(ex.prompt) for ex in examples]


def prepare_data(exp: Experiment, out_dir: Path) -> Path:
    """Write `out_dir/{train,eval,test}.jsonl`, `tokenizer/` (if a preset is used) and
    `manifest.json`; reuse the folder when its manifest matches the data config."""
    config = exp.data.model_dump(mode="json")
    needs_tokenizer = any(is_preset(m) for m in [*exp.models, exp.eval.rm_model])
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("data") == config and (not needs_tokenizer or manifest.get("tokenizer")):
            return out_dir
    splits, cleaning = load_splits(exp.data)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split in SPLITS:
        write_jsonl(splits[split], tmp / f"{split}.jsonl")
    if needs_tokenizer:
        tokenizer = train_tokenizer(
            tokenizer_corpus(splits["train"] + splits["eval"]),
            vocab_size=exp.data.tokenizer_vocab_size,
        )
        tokenizer.save_pretrained(tmp / "tokenizer")
    manifest = {
        "data": config,
        "counts": {s: len(splits[s]) for s in SPLITS},
        "cleaning": cleaning,
        "tokenizer": needs_tokenizer,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir


def read_split(data_dir: Path, split: str) -> list[PreferenceExample]:
    return read_jsonl(Path(data_dir) / f"{split}.jsonl")
