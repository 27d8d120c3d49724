"""The results contract: the folder of tidy tables that evaluation writes and the report reads.

A results folder holds `meta.json` and one parquet file per table below. The evaluation and
flow code write exactly these columns; extra columns are allowed (and ignored) so the writers can
grow without breaking old renderers. A table that is absent or has no rows is not an error: the
run may have failed part-way, and the report says what is missing instead of crashing. A table
that is present but breaks the contract (a required column missing, an unknown method) IS an
error, raised with the file and the offending columns or values named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from orpo.methods import METHOD_NAMES, OTHER_METHODS
from orpo.timing import PHASES

META_FILE = "meta.json"

DATA_SOURCES = ("synthetic", "hh-rlhf", "ultrafeedback")
# "base": the untrained starting model of a pretrained checkpoint, evaluated as a control
METHODS = ("base", "pretrain", *METHOD_NAMES, "rm")
CELL_STATUSES = ("completed", "cached", "failed")
# "dpo" always means SFT then DPO (the paper's pipeline), never DPO from the base model.
WIN_RATE_METHODS_A = ("orpo", "dpo", "sft", *OTHER_METHODS)
WIN_RATE_METHODS_B = ("sft", "dpo", "base", *OTHER_METHODS)

POOLED_SEED = -1  # win_rates.seed for a row pooled over every seed
GREEDY_SAMPLE_INDEX = -1  # samples.sample_index for the greedy answer
# win_rates.comparison: a verdict the experiment asks for, or a check of the machinery
METHOD, POSITIVE_CONTROL, NEGATIVE_CONTROL = "method", "positive-control", "negative-control"
VERDICT_ALPHA = 0.05  # each judge's family of verdicts is held to this error rate (Holm)

# Metric names exactly as logged to MLflow; the report reads these from curves.parquet.
# held-out log-probs, logged at every eval for every method (SFT included: Fig. 3)
METRIC_LOGP_CHOSEN = "eval/logp_chosen"
METRIC_LOGP_REJECTED = "eval/logp_rejected"

REQUIRED_META_KEYS = ("experiment", "data_source", "judge", "models")

# per-cell totals, copied from each cell's result.json
CELL_TOTALS = ("forward_passes", "tokens", "wall_seconds", "peak_rss_mb", "best_eval_loss", "steps")

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "cells": (
        "cell_id",
        "method",
        "model",
        "orpo_lambda",
        "dpo_beta",
        "seed",
        "status",
        "error",
        "mlflow_run_url",
        *CELL_TOTALS,
    ),
    "win_rates": (
        "model",
        "method_a",
        "orpo_lambda_a",
        "method_b",
        "judge",
        "seed",
        "win_rate",
        "sd_rounds",
        "ci_low",
        "ci_high",
        "n_prompts",
        "n_rounds",
    ),
    "diversity": (
        "cell_id",
        "method",
        "model",
        "orpo_lambda",
        "seed",
        "pid",
        "aid",
        "distinct_1",
        "distinct_2",
        "embedder",
    ),
    "judges": ("judge", "agreement_heldout", "agreement_oracle", "n_pairs"),
    "curves": ("cell_id", "method", "model", "orpo_lambda", "seed", "step", "metric", "value"),
    "logratios": (
        "cell_id",
        "method",
        "model",
        "orpo_lambda",
        "seed",
        "log_odds_ratio",
        "log_prob_ratio",
    ),
    # one row per cell and orpo.timing phase it went through
    "timings": ("cell_id", "phase", "seconds"),
    "samples": (
        "cell_id",
        "method",
        "model",
        "orpo_lambda",
        "seed",
        "prompt_id",
        "prompt",
        "sample_index",
        "text",
        "reward",
    ),
}

# Columns coerced to numbers on load, so NaN-or-None columns written by different code paths
# (None in an object column vs NaN in a float column) compare and plot the same way.
NUMERIC_COLUMNS = frozenset(
    {
        "orpo_lambda",
        "orpo_lambda_a",
        "dpo_beta",
        "seed",
        "forward_passes",
        "tokens",
        "wall_seconds",
        "seconds",
        "peak_rss_mb",
        "best_eval_loss",
        "steps",
        "win_rate",
        "sd_rounds",
        "ci_low",
        "ci_high",
        "n_prompts",
        "n_rounds",
        "pid",
        "aid",
        "distinct_1",
        "distinct_2",
        "agreement_heldout",
        "agreement_oracle",
        "n_pairs",
        "step",
        "value",
        "log_odds_ratio",
        "log_prob_ratio",
        "sample_index",
        "reward",
    }
)

# Closed vocabularies checked on load: a typo here would otherwise silently drop rows from a plot.
ALLOWED_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    ("cells", "method"): METHODS,
    ("cells", "status"): CELL_STATUSES,
    ("win_rates", "method_a"): WIN_RATE_METHODS_A,
    ("win_rates", "method_b"): WIN_RATE_METHODS_B,
    ("diversity", "method"): METHODS,
    ("curves", "method"): METHODS,
    ("logratios", "method"): METHODS,
    ("samples", "method"): METHODS,
    ("timings", "phase"): PHASES,
}


class ResultsContractError(ValueError):
    """A results folder that exists but does not follow the contract above."""


@dataclass(frozen=True)
class Meta:
    experiment: str
    data_source: str
    judge: str
    models: list[str]  # in size order, smallest first
    orpo_lambdas: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    created: str = ""
    data_rows: str = ""  # what preparation kept and cleaning dropped (orpo.data.counts)
    prefect_flow_run_url: str | None = None
    mlflow_parent_run_url: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Results:
    results_dir: Path
    meta: Meta
    cells: pd.DataFrame
    win_rates: pd.DataFrame
    diversity: pd.DataFrame
    judges: pd.DataFrame
    curves: pd.DataFrame
    logratios: pd.DataFrame
    samples: pd.DataFrame
    timings: pd.DataFrame
    missing: dict[str, str]  # table name -> why it has no rows ("file not found", "no rows")

    def table(self, name: str) -> pd.DataFrame:
        return getattr(self, name)


def table_file(name: str) -> str:
    return f"{name}.parquet"


def load_results(results_dir: Path | str) -> Results:
    """Read and validate a results folder; absent or empty tables come back as empty frames."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultsContractError(f"results folder {results_dir} does not exist")
    meta = load_meta(results_dir / META_FILE)
    tables: dict[str, pd.DataFrame] = {}
    missing: dict[str, str] = {}
    for name in TABLE_COLUMNS:
        frame, why_missing = _load_table(results_dir, name)
        tables[name] = frame
        if why_missing:
            missing[name] = why_missing
    return Results(results_dir=results_dir, meta=meta, missing=missing, **tables)


def load_meta(path: Path) -> Meta:
    if not path.is_file():
        raise ResultsContractError(f"{path} not found: every results folder needs {META_FILE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ResultsContractError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ResultsContractError(f"{path} must hold a JSON object, got {type(raw).__name__}")
    absent = [key for key in REQUIRED_META_KEYS if key not in raw]
    if absent:
        raise ResultsContractError(f"{path} is missing required keys: {absent}")
    if raw["data_source"] not in DATA_SOURCES:
        raise ResultsContractError(
            f"{path}: data_source {raw['data_source']!r} is not one of {list(DATA_SOURCES)}"
        )
    if not isinstance(raw["models"], list):
        raise ResultsContractError(f"{path}: models must be a list of names in size order")
    return Meta(
        experiment=str(raw["experiment"]),
        data_source=raw["data_source"],
        judge=str(raw["judge"]),
        models=[str(m) for m in raw["models"]],
        orpo_lambdas=[float(x) for x in raw.get("orpo_lambdas") or []],
        seeds=[int(x) for x in raw.get("seeds") or []],
        created=str(raw.get("created") or ""),
        data_rows=str(raw.get("data_rows") or ""),
        prefect_flow_run_url=raw.get("prefect_flow_run_url"),
        mlflow_parent_run_url=raw.get("mlflow_parent_run_url"),
        notes=[str(n) for n in raw.get("notes") or []],
    )


def empty_table(name: str) -> pd.DataFrame:
    return pd.DataFrame({column: pd.Series(dtype=_dtype(column)) for column in TABLE_COLUMNS[name]})


def _dtype(column: str) -> str:
    return "float64" if column in NUMERIC_COLUMNS else "object"


def _load_table(results_dir: Path, name: str) -> tuple[pd.DataFrame, str | None]:
    path = results_dir / table_file(name)
    if not path.is_file():
        return empty_table(name), f"{table_file(name)} not found"
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise ResultsContractError(f"{path} could not be read as parquet: {exc}") from exc
    _check_columns(path, name, frame)
    frame = _coerce_numeric(path, frame)
    _check_allowed_values(path, name, frame)
    if frame.empty:
        return empty_table(name), f"{table_file(name)} has no rows"
    return frame.reset_index(drop=True), None


def _check_columns(path: Path, name: str, frame: pd.DataFrame) -> None:
    absent = [column for column in TABLE_COLUMNS[name] if column not in frame.columns]
    if absent:
        raise ResultsContractError(
            f"{path} is missing required columns {absent}; it has {list(frame.columns)}"
        )


def _coerce_numeric(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in frame.columns.intersection(sorted(NUMERIC_COLUMNS)):
        try:
            # None -> NaN; a string like "abc" is a writer bug and must not become NaN silently.
            frame[column] = pd.to_numeric(frame[column].astype(object).where(frame[column].notna()))
        except (TypeError, ValueError) as exc:
            raise ResultsContractError(f"{path}: column {column!r} must be numeric: {exc}") from exc
    return frame


def _check_allowed_values(path: Path, name: str, frame: pd.DataFrame) -> None:
    for (table, column), allowed in ALLOWED_VALUES.items():
        if table != name:
            continue
        unknown = sorted({str(v) for v in frame[column].dropna().unique()} - set(allowed))
        if unknown:
            raise ResultsContractError(
                f"{path}: column {column!r} has unknown values {unknown}; allowed: {list(allowed)}"
            )


def is_missing(value: object) -> bool:
    """True for None and NaN (pandas gives either, depending on the column's dtype)."""
    if value is None:
        return True
    try:
        return math.isnan(value)  # type: ignore[arg-type]
    except TypeError:
        return False
