"""Prepare an experiment's data once: train/eval/test JSONL in the one schema, the tokenizer the
presets use, and a manifest (counts, what cleaning dropped, the sampling seed and the ids of the
rows each split kept, a content version).

Real data sets are sampled, never cut at the head: dumps are often sorted by subset (HH-RLHF's
files run helpful-base, then harmless-base, ...), so the first rows would be one subset. The
`limit` training rows and the `test_size` test pairs are seeded random samples (`SAMPLE_SEED`),
and the eval pairs are carved from the sampled training pairs.

Written into a temporary folder and renamed into place, so a failure leaves nothing half-written;
an existing folder with the same data config and manifest version is reused (the data are
deterministic).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from orpo.config import DataConfig, Experiment
from orpo.data.adapters import SAMPLE_SEED, load_preference_dataset, sample_indices
from orpo.data.clean import CleaningReport, clean_pairs
from orpo.data.schema import PreferenceExample, read_jsonl, write_jsonl
from orpo.data.synthetic import corpus_texts, generate_suite
from orpo.data.tokenize import render_simple_template
from orpo.models import is_preset, train_tokenizer
from orpo.sources import materialize

SPLITS = ("train", "eval", "test")
MANIFEST_VERSION = 2
"""Bumped when the same data config gives different rows, so older folders are rebuilt, not
reused: 2 = seeded samples instead of head rows, HH/UltraFeedback rows with a turn inside the
reply or mismatched prompts dropped, and the "sampling" section."""


def _load_real(data: DataConfig) -> tuple[dict[str, list[PreferenceExample]], dict]:
    """Train: a `SAMPLE_SEED` sample of `data.limit` rows (before cleaning, so at most `limit`
    pairs), cleaned, then shuffled and cut into eval and train. Test: every row cleaned, then a
    `SAMPLE_SEED` sample of `data.test_size` pairs (so exactly that many when there are enough)."""
    report = CleaningReport()
    train, _ = clean_pairs(
        load_preference_dataset(
            data.source, data.path, data.train_split, data.limit, seed=SAMPLE_SEED, report=report
        ),
        report=report,
    )
    test_source = data.test_path or data.path
    test_report = CleaningReport()
    test_pool, _ = clean_pairs(
        load_preference_dataset(data.source, test_source, data.test_split, report=test_report),
        report=test_report,
    )
    test = [test_pool[i] for i in sample_indices(len(test_pool), data.test_size, SAMPLE_SEED)]
    rng = random.Random(SAMPLE_SEED)  # eval pairs carved from train, deterministically
    rng.shuffle(train)
    if len(train) <= data.eval_size:
        raise ValueError(
            f"data.path {data.path}: {len(train)} pairs after cleaning, not enough "
            f"for data.eval_size={data.eval_size} plus training pairs"
        )
    splits = {
        "train": train[data.eval_size :],
        "eval": train[: data.eval_size],
        "test": test,
    }
    return splits, {"train": report.__dict__, "test": test_report.__dict__}


def sampling_seed(data: DataConfig) -> int:
    """The seed the splits of `data` were drawn with: the synthetic suite's own, else
    `SAMPLE_SEED`."""
    return data.synthetic.seed if data.source == "synthetic" else SAMPLE_SEED


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
    judged_by_rm = exp.eval.judge == "reward-model"
    names = [*exp.model_names, *([exp.rm_model_name] if judged_by_rm else [])]
    sources = [exp.model_path(m) for m in dict.fromkeys(names)]
    for source in sources:  # GGUF files become safetensors folders, once, before any cell
        materialize(source)
    needs_tokenizer = any(is_preset(m) for m in sources)
    manifest_path = out_dir / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if (
            manifest.get("version") == MANIFEST_VERSION
            and manifest.get("data") == config
            and (not needs_tokenizer or manifest.get("tokenizer"))
        ):
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
        "version": MANIFEST_VERSION,
        "data": config,
        "counts": {s: len(splits[s]) for s in SPLITS},
        "cleaning": cleaning,
        "sampling": {
            "seed": sampling_seed(exp.data),
            "ids": {s: [ex.id for ex in splits[s]] for s in SPLITS},
        },
        "tokenizer": needs_tokenizer,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out_dir)
    return out_dir


def read_split(data_dir: Path, split: str) -> list[PreferenceExample]:
    return read_jsonl(Path(data_dir) / f"{split}.jsonl")
