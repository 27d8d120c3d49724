"""What preparing an experiment's data keeps and what tokenising its training pairs cuts,
counted before anything trains (the data section of `orpo plan`).

It runs the functions preparation and training run (`orpo.data.prepare.load_splits`,
`orpo.data.tokenize.encode_pairs`) on data that can be read here without the network: the
synthetic suite and local files. Hub data sets are counted when they are prepared.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from orpo.config import ConfigError, DataConfig, Experiment
from orpo.data.clean import CleaningReport
from orpo.data.schema import PreferenceExample
from orpo.data.tokenize import TruncationStats


def trained_model_names(exp: Experiment) -> list[str]:
    """The models cells train: the grid's, plus the reward model's when it judges."""
    judge = [exp.rm_model_name] if exp.eval.judge == "reward-model" else []
    return list(dict.fromkeys([*exp.model_names, *judge]))


# --- the data section --------------------------------------------------------------------------
PRESET_TOKENIZER = "preset"
"""Tokenizer source of every preset: the one `prepare_data` trains on the experiment's data."""


class TokenizerUnavailable(Exception):
    """The tokenizer a model's cells use cannot be had here without the network or a GGUF
    conversion; the message says why."""


@dataclass
class TruncationRow:
    """The training pairs under one tokenizer: the models whose cells use it, and the counts
    (`stats`), or why they cannot be counted here (`unavailable`)."""

    models: list[str]
    tokenizer: str
    stats: TruncationStats | None = None
    unavailable: str | None = None


@dataclass
class DataCounts:
    """What preparing the data gives and what tokenising the training pairs cuts."""

    cleaning: dict[str, CleaningReport]
    """Rows of the "train" and "test" sources, as the manifest's "cleaning" section counts
    them; empty for the synthetic suite, which preparation does not clean."""
    splits: dict[str, int]
    """Pairs per split ("train", "eval", "test") after sampling."""
    test_prompts_seen: int
    """Test prompts that are also train or eval prompts: generation would be scored on prompts
    the policies were trained on (a local file without data.test_path serves both)."""
    truncation: list[TruncationRow]


def _data_fields(data: DataConfig) -> str:
    """The data fields that say where the rows come from, for messages."""
    if data.source == "synthetic":
        return f"data.synthetic={data.synthetic.model_dump()}"
    fields = f"data.source={data.source!r}, data.path={data.path!r}"
    return fields + (f", data.test_path={data.test_path!r}" if data.test_path else "")


def why_not_readable(data: DataConfig) -> str | None:
    """Why the data cannot be read here (a hub id, or a path missing on this machine), or None
    when they can: the synthetic suite, or local files and folders."""
    from orpo.data.adapters import _looks_like_hub_id  # the loader's own hub-or-path rule

    if data.source == "synthetic":
        return None
    for field, value in (("path", data.path), ("test_path", data.test_path)):
        if value is None or Path(value).expanduser().exists():
            continue
        if _looks_like_hub_id(value):
            return f"data.{field}={value!r} is a hub data set"
        return f"data.{field}={value!r} is not on this machine (no such file or folder)"
    return None


def read_splits(exp: Experiment) -> tuple[dict[str, list[PreferenceExample]], dict]:
    """The splits and cleaning counts `prepare_data` writes, from the function it calls; a data
    set that cannot be prepared is a ConfigError naming the data fields."""
    from datasets.exceptions import DatasetGenerationError

    from orpo.data.prepare import load_splits

    try:
        with _quiet_datasets():
            splits, cleaning = load_splits(exp.data)
    except (ValueError, DatasetGenerationError) as err:  # malformed rows, too few pairs, ...
        raise ConfigError(f"{_data_fields(exp.data)}: cannot prepare the data: {err}") from None
    return splits, {part: CleaningReport(**counts) for part, counts in cleaning.items()}


@contextmanager
def _quiet_datasets():
    """Without `datasets`' "Generating train split" bars, which would cut into the plan's
    table; the caller's setting is restored."""
    from datasets.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def tokenizer_source(exp: Experiment, name: str) -> str:
    """Where the cells of model `name` take their tokenizer from, as
    `orpo.training.worker.resolve_tokenizer` does: `PRESET_TOKENIZER` for a preset, else the
    model's path (a checkpoint a cell starts from carries the same tokenizer)."""
    from orpo.models import is_preset

    path = exp.model_path(name)
    return PRESET_TOKENIZER if is_preset(path) else path


def tokenizer_folder(path: str) -> str:
    """The local folder holding the tokenizer of model `path`, found without the network and
    without dequantising a GGUF file; TokenizerUnavailable when there is none."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    from orpo.models import resolve_model_name
    from orpo.sources import gguf_folder, is_gguf

    if is_gguf(path):
        folder = gguf_folder(path)
        if not (folder / "model.safetensors").is_file():  # what `materialize` checks too
            raise TokenizerUnavailable(
                f"it comes with the dequantised folder {folder}, made once when the data are "
                "prepared (orpo run / orpo train); plan again after that"
            )
        return str(folder)
    resolved = resolve_model_name(path)
    if Path(resolved).expanduser().is_dir():
        return str(Path(resolved).expanduser())
    try:  # a hub id: only a copy already in the local cache, never a download
        return snapshot_download(resolved, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        raise TokenizerUnavailable(
            f"{resolved} is not in the local hub cache; counted when its cells train"
        ) from None


def cell_tokenizer(exp: Experiment, source: str, splits: dict[str, list[PreferenceExample]]):
    """The tokenizer cells with this `tokenizer_source` encode their pairs with."""
    from orpo.models import load_tokenizer, train_tokenizer

    if source == PRESET_TOKENIZER:
        from orpo.data.prepare import tokenizer_corpus

        # prepare_data's recipe; test_plan checks it against a prepared folder's tokenizer
        return train_tokenizer(
            tokenizer_corpus(splits["train"] + splits["eval"]),
            vocab_size=exp.data.tokenizer_vocab_size,
        )
    folder = tokenizer_folder(source)
    try:
        return load_tokenizer(folder, trust_remote_code=exp.trust_remote_code)
    except (OSError, ValueError) as err:  # a model folder without tokenizer files
        raise TokenizerUnavailable(f"no tokenizer in {folder}: {err}") from None


def _tokenizer_label(exp: Experiment, source: str) -> str:
    if source == PRESET_TOKENIZER:
        return f"tokenizer trained on train+eval, vocab {exp.data.tokenizer_vocab_size}"
    return f"tokenizer of {source}"


def truncation_rows(
    exp: Experiment, splits: dict[str, list[PreferenceExample]]
) -> list[TruncationRow]:
    """The truncation counts of the training pairs, once per tokenizer the cells use, by the
    function training encodes them with (`encode_pairs`, via `load_stage_data`)."""
    from orpo.data.tokenize import encode_pairs

    by_source: dict[str, list[str]] = {}
    for name in trained_model_names(exp):
        by_source.setdefault(tokenizer_source(exp, name), []).append(name)
    rows = []
    for source, names in by_source.items():
        row = TruncationRow(names, _tokenizer_label(exp, source))
        try:
            tokenizer = cell_tokenizer(exp, source, splits)
        except TokenizerUnavailable as why:
            row.unavailable = str(why)
        else:
            _, row.stats = encode_pairs(
                tokenizer, splits["train"], exp.data.max_length, exp.data.max_prompt_length
            )
        rows.append(row)
    return rows


def _prompt_key(example: PreferenceExample) -> str:
    # by content, not id: ids restart at 0 in every file or split, so they clash across them
    return json.dumps(example.prompt, sort_keys=True)


def data_counts(exp: Experiment) -> DataCounts:
    """Count what preparation keeps and what truncation cuts; the data must be readable here
    (`why_not_readable` is None)."""
    splits, cleaning = read_splits(exp)
    seen = {_prompt_key(ex) for split in ("train", "eval") for ex in splits[split]}
    return DataCounts(
        cleaning=cleaning,
        splits={split: len(examples) for split, examples in splits.items()},
        test_prompts_seen=sum(_prompt_key(ex) in seen for ex in splits["test"]),
        truncation=truncation_rows(exp, splits),
    )


def manifest_line(manifest: dict) -> str:
    """One line of what preparation kept, for the report: split sizes, then per source file
    the rows cleaning read, kept and dropped (with reasons); from `runs/<exp>/data/manifest.json`."""
    sizes = ", ".join(f"{split} {n}" for split, n in (manifest.get("counts") or {}).items())
    parts = [f"pairs: {sizes}" if sizes else "pairs: not recorded"]
    for part, counts in (manifest.get("cleaning") or {}).items():
        report = CleaningReport(**counts)
        parts.append(f"{part} rows cleaned: {report.summary()}")
    if not manifest.get("cleaning"):
        parts.append("generated (the synthetic suite is not cleaned)")
    return "; ".join(parts)


def _cleaning_line(part: str, report: CleaningReport, data: DataConfig) -> str:
    dropped = {reason: n for reason, n in report.dropped.items() if n}
    reasons = ", ".join(f"{reason}={n}" for reason, n in dropped.items()) or "none"
    sample = (
        f" (a seeded sample of data.limit={data.limit})" if part == "train" and data.limit else ""
    )
    return (
        f"  {part} rows: {report.total} read{sample}, {report.kept} kept by cleaning, "
        f"{report.total - report.kept} dropped ({reasons})"
    )


def data_lines(exp: Experiment) -> list[str]:
    """The data section of `orpo plan`: rows read, kept and dropped by cleaning (per reason),
    split sizes, and the truncation counts of the training pairs under each tokenizer the cells
    use. For data not readable here (a hub data set, a path missing on this machine), one line
    naming the field and saying when they are counted."""
    from orpo.data.prepare import sampling_seed

    data = exp.data
    why = why_not_readable(data)
    if why is not None:
        return [
            f"data: {data.source}: {why}; rows read, cleaning drops, split sizes and "
            f"truncation are counted when the data are prepared (runs/{exp.name}/data/"
            "manifest.json) and when cells train"
        ]
    counts = data_counts(exp)
    if data.source == "synthetic":
        generated = sum(counts.splits.values())
        lines = [f"data: synthetic suite, {generated} pairs generated, not cleaned"]
    else:
        test_file = f", test pairs from {data.test_path}" if data.test_path else ""
        lines = [f"data: {data.source} from {data.path}{test_file}"]
        lines += [_cleaning_line(p, r, data) for p, r in counts.cleaning.items()]
    sizes = ", ".join(f"{split} {n}" for split, n in counts.splits.items())
    lines.append(f"  splits: {sizes} (sampling seed {sampling_seed(data)})")
    if counts.test_prompts_seen:
        hint = "" if data.test_path else ": set data.test_path to a file of held-out pairs"
        lines.append(
            f"  {counts.test_prompts_seen} of the {counts.splits['test']} test prompts are also "
            f"train/eval prompts{hint}"
        )
    lines.append(
        f"  truncation of the {counts.splits['train']} training pairs at "
        f"data.max_length={data.max_length}, data.max_prompt_length={data.max_prompt_length}:"
    )
    for row in counts.truncation:
        counted = row.stats.summary() if row.stats else f"not counted: {row.unavailable}"
        lines.append(f"    {', '.join(row.models)} [{row.tokenizer}]: {counted}")
    return lines
