"""Human names and stable orderings for methods, method variants and models.

A "variant" is a method plus the hyper-parameter the grid sweeps for it (ORPO's lambda), the unit
every table and plot shows one row or line for.
"""

from __future__ import annotations

import pandas as pd

from orpo.report.tables import is_missing

METHOD_LABELS = {
    "base": "base (untrained)",
    "pretrain": "pretrained base",
    "sft": "SFT",
    "dpo": "SFT+DPO",
    "orpo": "ORPO",
    "rm": "reward model",
}
METHOD_ORDER = ("base", "pretrain", "sft", "dpo", "orpo", "rm")
# What generates: the untrained base (where there is a base row), then the policies the paper
# compares, in the order its figures show them.
POLICY_METHODS = ("base", "sft", "dpo", "orpo")


def method_label(method: str, orpo_lambda: float | None = None) -> str:
    label = METHOD_LABELS.get(method, method)
    if method == "orpo" and not is_missing(orpo_lambda):
        return f"{label} (λ={format_number(orpo_lambda)})"
    return label


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


def policy_variants(frame: pd.DataFrame) -> list[tuple[str, float]]:
    """(method, lambda) pairs of SFT, SFT+DPO and ORPO present in a table, in that order."""
    return method_variants(frame, POLICY_METHODS)


def method_variants(frame: pd.DataFrame, methods=METHOD_ORDER) -> list[tuple[str, float]]:
    """(method, lambda) pairs present in a table, by method order then lambda."""
    if frame.empty:
        return []
    # drop_duplicates treats NaN lambdas as equal, so each non-ORPO method appears once.
    pairs = frame[["method", "orpo_lambda"]].drop_duplicates()
    variants = [
        (method, float("nan") if is_missing(orpo_lambda) else float(orpo_lambda))
        for method, orpo_lambda in pairs.itertuples(index=False)
        if method in methods
    ]
    return sorted(variants, key=variant_sort_key)


def variant_sort_key(variant: tuple[str, float]) -> tuple[int, float]:
    method, orpo_lambda = variant
    rank = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
    return rank, -1.0 if is_missing(orpo_lambda) else orpo_lambda


def rows_of_variant(frame: pd.DataFrame, method: str, orpo_lambda: float) -> pd.DataFrame:
    """Rows of one variant; NaN lambda matches NaN (pandas == would never match it)."""
    same_method = frame["method"] == method
    if is_missing(orpo_lambda):
        return frame[same_method & frame["orpo_lambda"].isna()]
    return frame[same_method & (frame["orpo_lambda"] == orpo_lambda)]
