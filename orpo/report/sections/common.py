"""Helpers several sections share: what is missing, which win-rate rows headline, the verdict."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orpo.report.labels import method_label
from orpo.report.markup import Safe, note, pct
from orpo.report.tables import POOLED_SEED, Results

COMPARISON_KEY = ["model", "method_a", "orpo_lambda_a", "method_b", "judge"]


def missing_note(results: Results, *names: str) -> Safe | None:
    """A plain sentence naming the tables a section needs but the run did not produce."""
    reasons = [results.missing[n] for n in names if n in results.missing]
    if not reasons:
        return None
    return note("Not available for this run: ", "; ".join(reasons), ".")


def failed_cells_note(results: Results, method: str) -> Safe | None:
    """Say how many cells of a method failed, the usual reason its rows are absent."""
    cells = results.cells
    if cells.empty:
        return None
    of_method = cells[cells["method"] == method]
    failed = of_method[of_method["status"] == "failed"]
    if failed.empty:
        return None
    return note(
        f"{len(failed)} of {len(of_method)} {method_label(method)} cells failed "
        "(their errors are in the Cells section)."
    )


@dataclass(frozen=True)
class HeadlineRows:
    rows: pd.DataFrame  # one row per comparison key (pooled over seeds where available)
    judge: str  # the judge the rows come from
    caveats: tuple[str, ...]


def headline_rows(results: Results, judge: str | None = None) -> HeadlineRows:
    """Win-rate rows of one judge (default: the experiment's), pooled over seeds if possible.

    With one seed there is no pooled row and the seed's row is the result. With several seeds
    and no pooled row (a writer that skipped pooling), we show the lowest seed and say so rather
    than averaging CIs, which would not be a CI.
    """
    win_rates = results.win_rates
    judge = judge or results.meta.judge
    caveats = []
    if win_rates.empty:
        return HeadlineRows(win_rates, judge, ())
    judges = list(win_rates["judge"].dropna().unique())
    if judge not in judges:
        caveats.append(f"No win rates by the judge {judge!r}; showing {judges[0]!r}.")
        judge = str(judges[0])
    of_judge = win_rates[win_rates["judge"] == judge]
    chosen = []
    unpooled_models: set[str] = set()
    for _, group in of_judge.groupby(COMPARISON_KEY, dropna=False, sort=False):
        pooled = group[group["seed"] == POOLED_SEED]
        if not pooled.empty:
            chosen.append(pooled.iloc[[0]])
            continue
        lowest_seed = group.sort_values("seed").iloc[[0]]
        if group["seed"].nunique() > 1:
            unpooled_models.add(str(lowest_seed["model"].iloc[0]))
        chosen.append(lowest_seed)
    if unpooled_models:
        caveats.append(
            f"No win rates pooled over seeds for {', '.join(sorted(unpooled_models))}: "
            "showing the lowest seed's."
        )
    rows = pd.concat(chosen, ignore_index=True)
    return HeadlineRows(rows, judge, tuple(caveats))


def variant_a_label(row) -> str:
    return method_label(row["method_a"], row["orpo_lambda_a"])


def verdict(row) -> tuple[str, str]:
    """(short verdict, css class) from the 95% CI: only a CI clear of 50% names a winner."""
    a, b = variant_a_label(row), method_label(row["method_b"])
    low, high = row["ci_low"], row["ci_high"]
    if pd.isna(low) or pd.isna(high):
        return "no CI: no winner called", "tie"
    if low > 0.5:
        return f"{a} won", "win"
    if high < 0.5:
        return f"{a} lost to {b}", "loss"
    return "no clear winner", "tie"


def verdict_sentence(row) -> str:
    a, b = variant_a_label(row), method_label(row["method_b"])
    short, kind = verdict(row)
    ci = f"95% CI {pct(row['ci_low'])}–{pct(row['ci_high'])}%"
    figures = f"win rate {pct(row['win_rate'])}%, {ci}"
    if kind == "win":
        return f"{row['model']}: {a} won against {b} ({figures})."
    if kind == "loss":
        return f"{row['model']}: {a} lost to {b} ({figures})."
    if short.startswith("no CI"):
        return f"{row['model']}: {a} vs {b}: no CI reported, so no winner is called ({figures})."
    return f"{row['model']}: {a} vs {b}: no clear winner, the CI includes 50% ({figures})."


def other_judges(results: Results, headline_judge: str) -> list[str]:
    """Judges with win rates besides the headline one (on synthetic data, the oracle)."""
    if results.win_rates.empty:
        return []
    return sorted(
        str(j) for j in results.win_rates["judge"].dropna().unique() if j != headline_judge
    )
