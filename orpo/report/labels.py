"""Human names and stable orderings for methods, method variants and models.

A "variant" is a method plus the hyper-parameters the grid sweeps for it (ORPO's lambda, DPO's
beta), the unit every table and plot shows one row or line for. Each swept value is its own
variant: averaging two betas under one "SFT+DPO" row would report a model nobody trained.
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd

from orpo.methods import METHOD_NAMES, METHODS
from orpo.report.tables import is_missing

METHOD_LABELS = {
    "base": "base (before fine-tuning)",  # a real model as loaded, or a preset after pretrain
    "pretrain": "pretrained base",
    **{name: spec.label for name, spec in METHODS.items()},
    "rm": "reward model",
}
METHOD_ORDER = ("base", "pretrain", *METHOD_NAMES, "rm")
# What generates: the untrained base (where there is a base row), then the policies the paper
# compares, in the order its figures show them, then the other methods.
POLICY_METHODS = ("base", *METHOD_NAMES)
# The swept knobs, as the per-cell tables name them.
KNOBS = ("orpo_lambda", "dpo_beta")
NAN = float("nan")


class _AnyBeta:
    """Sentinel for `rows_of_variant`: the caller did not say which beta, so every beta matches."""

    def __repr__(self) -> str:
        return "ANY_BETA"


ANY_BETA = _AnyBeta()


class Variant(NamedTuple):
    """One row or line of the report; NaN for a knob the method does not have."""

    method: str
    orpo_lambda: float = NAN
    dpo_beta: float = NAN

    @property
    def label(self) -> str:
        return method_label(self.method, self.orpo_lambda, self.dpo_beta)


def method_label(
    method: str, orpo_lambda: float | None = None, dpo_beta: float | None = None
) -> str:
    """The name a table row or legend shows: "ORPO (λ=0.5)", "SFT+DPO (β=0.1)", "SFT".

    Every known knob is named, so two variants of one method never share a label; None or NaN
    means the knob is unknown or not swept.
    """
    label = METHOD_LABELS.get(method, method)
    knobs = knob_text(orpo_lambda, dpo_beta)
    return f"{label} ({knobs})" if knobs else label


def knob_text(orpo_lambda: float | None = None, dpo_beta: float | None = None) -> str:
    """The knobs alone: "λ=0.5", "β=0.1", "λ=0.5, β=0.1", or "" when none is known."""
    parts = []
    if not is_missing(orpo_lambda):
        parts.append(f"λ={format_number(orpo_lambda)}")
    if not is_missing(dpo_beta):
        parts.append(f"β={format_number(dpo_beta)}")
    return ", ".join(parts)


def format_number(value: float) -> str:
    """0.1 -> "0.1", 1.0 -> "1", 0.25 -> "0.25": lambdas and betas as people write them."""
    return f"{value:g}"


def model_rank(models_in_size_order: list[str]):
    """Sort key placing meta's size order first and any model it does not list after, by name."""
    position = {name: i for i, name in enumerate(models_in_size_order)}
    return lambda name: (position.get(name, len(position)), str(name))


def ordered_models(frame: pd.DataFrame, models_in_size_order: list[str]) -> list[str]:
    present = {str(m) for m in frame["model"].dropna().unique()} if not frame.empty else set()
    return sorted(present, key=model_rank(models_in_size_order))


def knob_values(frame: pd.DataFrame, column: str) -> pd.Series:
    """A knob column as floats. A table written before the knob was recorded (no such column)
    reads as all-NaN, so it still renders, one variant per method as it used to."""
    if column not in frame.columns:
        return pd.Series(NAN, index=frame.index, dtype="float64")
    # win_rates' dpo_beta_a/_b are extra columns the loader does not coerce: None -> NaN here.
    return pd.to_numeric(frame[column].astype(object).where(frame[column].notna()))


def policy_variants(frame: pd.DataFrame) -> list[Variant]:
    """Variants of the base, SFT, SFT+DPO and ORPO present in a table, in that order."""
    return table_variants(frame, POLICY_METHODS)


def table_variants(frame: pd.DataFrame, methods=METHOD_ORDER) -> list[Variant]:
    """Every (method, lambda, beta) present in a table, by method order, then lambda, then beta."""
    if frame.empty:
        return []
    keys = pd.DataFrame(
        {"method": frame["method"], **{knob: knob_values(frame, knob) for knob in KNOBS}}
    )
    # drop_duplicates treats NaN as equal to NaN, so a method without a knob appears once.
    unique = keys[keys["method"].isin(methods)].drop_duplicates()
    found = [
        Variant(method, _as_float(orpo_lambda), _as_float(dpo_beta))
        for method, orpo_lambda, dpo_beta in unique.itertuples(index=False)
    ]
    return sorted(found, key=variant_sort_key)


def method_variants(frame: pd.DataFrame, methods=METHOD_ORDER) -> list[tuple[str, float]]:
    """(method, lambda) pairs present in a table, by method order then lambda.

    The variants as they were before betas were swept: it pools every beta of SFT+DPO into one
    pair. No section calls it any more; it stays for code written against the old pairs.
    """
    if frame.empty:
        return []
    pairs = pd.DataFrame(
        {"method": frame["method"], "orpo_lambda": knob_values(frame, "orpo_lambda")}
    )
    return sorted(
        (
            (method, _as_float(orpo_lambda))
            for method, orpo_lambda in pairs.drop_duplicates().itertuples(index=False)
            if method in methods
        ),
        key=variant_sort_key,
    )


def variant_sort_key(variant: tuple) -> tuple[int, float, float]:
    """Method order, then lambda, then beta (a missing knob first); takes old (method, lambda)
    pairs too."""
    method, orpo_lambda, *rest = variant
    dpo_beta = rest[0] if rest else NAN
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, _sortable(orpo_lambda), _sortable(dpo_beta)


def rows_of_variant(
    frame: pd.DataFrame,
    method: str,
    orpo_lambda: float | None,
    dpo_beta: float | None | _AnyBeta = ANY_BETA,
) -> pd.DataFrame:
    """Rows of one variant; a NaN knob matches NaN (pandas == would never match it).

    Pass the beta (`rows_of_variant(frame, *variant)`): left out, every beta matches, which is
    what callers written before betas were swept expect and which pools them.
    """
    mask = (frame["method"] == method) & _matches(knob_values(frame, "orpo_lambda"), orpo_lambda)
    if not isinstance(dpo_beta, _AnyBeta):
        mask &= _matches(knob_values(frame, "dpo_beta"), dpo_beta)
    return frame[mask]


def _matches(values: pd.Series, knob: float | None) -> pd.Series:
    return values.isna() if is_missing(knob) else values == knob


def _as_float(value) -> float:
    return NAN if is_missing(value) else float(value)


def _sortable(value) -> float:
    # Knobs are positive, so -1 sorts "no knob" (SFT, the plain method) before every value.
    return -1.0 if is_missing(value) else float(value)
