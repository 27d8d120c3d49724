"""Helpers several sections share: what is missing, which win-rate rows headline, the verdict."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orpo.report.labels import method_label
from orpo.report.markup import Safe, note, pct
from orpo.report.tables import (
    METHOD,
    NEGATIVE_CONTROL,
    POOLED_SEED,
    VERDICT_ALPHA,
    Results,
)

COMPARISON_KEY = [
    "model", "method_a", "orpo_lambda_a", "dpo_beta_a", "method_b", "dpo_beta_b", "judge",
]  # fmt: skip
WEAK_AGREEMENT = 0.7  # a judge ordering fewer pairs like the ground truth is flagged as weak


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


def of_kind(win_rates: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Rows of one comparison kind; tables written before the controls existed hold only
    method comparisons."""
    if "comparison" not in win_rates.columns:
        return win_rates if kind == METHOD else win_rates.iloc[0:0]
    return win_rates[win_rates["comparison"] == kind]


@dataclass(frozen=True)
class JudgeStanding:
    judge: str
    agreement: float | None  # with the ground truth: the oracle, else held-out pairs
    basis: str  # what the agreement was measured against

    @property
    def weak(self) -> bool:
        return self.agreement is None or self.agreement < WEAK_AGREEMENT


def judge_ranking(results: Results) -> list[JudgeStanding]:
    """Judges with win rates, best agreement with ground truth first. On synthetic data the
    oracle IS the ground truth (agreement 1 by definition) and the others are measured against
    it on the generated pairs; otherwise against the held-out preference pairs."""
    judged = set(results.win_rates["judge"].dropna()) if not results.win_rates.empty else set()
    quality = (
        {str(r["judge"]): r for _, r in results.judges.iterrows()}
        if not results.judges.empty
        else {}
    )
    has_oracle = "oracle" in judged
    standings = []
    for judge in sorted(judged):
        row = quality.get(judge)
        if judge == "oracle":
            standings.append(JudgeStanding(judge, 1.0, "is the ground truth"))
            continue
        column, basis = (
            ("agreement_oracle", "oracle, generated pairs")
            if has_oracle
            else ("agreement_heldout", "held-out pairs")
        )
        value = None if row is None or pd.isna(row.get(column)) else float(row[column])
        standings.append(JudgeStanding(judge, value, basis))
    return sorted(standings, key=lambda s: -1.0 if s.agreement is None else -s.agreement)


def headline_judge(results: Results) -> str:
    """The judge with the best measured agreement with ground truth (else the experiment's)."""
    ranking = judge_ranking(results)
    return ranking[0].judge if ranking else results.meta.judge


def weak_judge_note(results: Results, judge: str) -> Safe | None:
    """The warning that goes with every number of a judge that agrees poorly with the truth."""
    standing = next((s for s in judge_ranking(results) if s.judge == judge), None)
    if standing is None or not standing.weak:
        return None
    measured = (
        "its agreement with ground truth was not measured"
        if standing.agreement is None
        else f"it orders only {pct(standing.agreement)}% of pairs like the ground truth "
        f"({standing.basis}; 50% is chance)"
    )
    return note(f"Weak judge: {judge}: {measured}. Read its verdicts with care.")


def headline_rows(results: Results, judge: str | None = None, kind: str = METHOD) -> HeadlineRows:
    """Win-rate rows of one judge (default: the best one) and kind, pooled over seeds if
    possible.

    With one seed there is no pooled row and the seed's row is the result. With several seeds
    and no pooled row (a writer that skipped pooling), we show the lowest seed and say so rather
    than averaging CIs, which would not be a CI. Negative controls are never pooled: each row
    is its own check.
    """
    win_rates = results.win_rates
    judge = judge or headline_judge(results)
    caveats = []
    if win_rates.empty:
        return HeadlineRows(win_rates, judge, ())
    judges = list(win_rates["judge"].dropna().unique())
    if judge not in judges:
        caveats.append(f"No win rates by the judge {judge!r}; showing {judges[0]!r}.")
        judge = str(judges[0])
    of_judge = of_kind(win_rates[win_rates["judge"] == judge], kind)
    # tables written before betas were keyed have no beta columns: one beta, as NaN
    of_judge = of_judge.assign(
        **{c: float("nan") for c in ("dpo_beta_a", "dpo_beta_b") if c not in of_judge.columns}
    )
    if kind == NEGATIVE_CONTROL or of_judge.empty:
        return HeadlineRows(of_judge.reset_index(drop=True), judge, tuple(caveats))
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
    return method_label(row["method_a"], row["orpo_lambda_a"], row.get("dpo_beta_a"))


def variant_b_label(row) -> str:
    label = method_label(row["method_b"], None, row.get("dpo_beta_b"))
    seed_b = row.get("seed_b")
    if row.get("comparison") != NEGATIVE_CONTROL or seed_b is None or pd.isna(seed_b):
        return label
    # a negative control is SFT against itself: resampled (same seed) or another seed's SFT
    return f"{label} (resampled)" if seed_b == row["seed"] else f"{label} (seed {int(seed_b)})"


def adjusted_p(row) -> float | None:
    value = row.get("p_holm")
    return None if value is None or pd.isna(value) else float(value)


def raw_verdict(row) -> str:
    """'win', 'loss' or 'tie' from the row's own 95% CI, before any multiplicity adjustment."""
    low, high = row["ci_low"], row["ci_high"]
    if pd.isna(low) or pd.isna(high):
        return "none"
    return "win" if low > 0.5 else "loss" if high < 0.5 else "tie"


def verdict(row) -> tuple[str, str]:
    """(short verdict, css class). A method row names a winner only when its CI is clear of 50%
    AND its Holm-adjusted p-value is below VERDICT_ALPHA; a control row (no adjustment) by its CI."""
    a, b = variant_a_label(row), variant_b_label(row)
    raw = raw_verdict(row)
    if raw == "none":
        return "no CI: no winner called", "tie"
    p_holm = adjusted_p(row)
    if raw != "tie" and p_holm is not None and p_holm >= VERDICT_ALPHA:
        return "no clear winner after adjustment", "tie"
    if raw == "win":
        return f"{a} won", "win"
    if raw == "loss":
        return f"{a} lost to {b}", "loss"
    return "no clear winner", "tie"


def detectable_text(row) -> str:
    value = row.get("detectable")
    if value is None or pd.isna(value):
        return ""
    return f"; the smallest difference it detects with 80% power is ±{pct(value)} points"


def verdict_sentence(row) -> str:
    a, b = variant_a_label(row), variant_b_label(row)
    short, kind = verdict(row)
    p_holm = adjusted_p(row)
    ci = f"95% CI {pct(row['ci_low'])}–{pct(row['ci_high'])}%"
    adjusted = "" if p_holm is None else f", Holm-adjusted p = {p_holm:.3g}"
    figures = f"win rate {pct(row['win_rate'])}%, {ci}{adjusted}"
    if kind == "win":
        return f"{row['model']}: {a} won against {b} ({figures})."
    if kind == "loss":
        return f"{row['model']}: {a} lost to {b} ({figures})."
    if short.startswith("no CI"):
        return f"{row['model']}: {a} vs {b}: no CI reported, so no winner is called ({figures})."
    if short.endswith("adjustment"):
        return (
            f"{row['model']}: {a} vs {b}: no clear winner once every comparison of this judge "
            f"is accounted for (Holm), although the CI alone excludes 50% ({figures})."
        )
    return (
        f"{row['model']}: {a} vs {b}: no clear winner, the CI includes 50% "
        f"({figures}{detectable_text(row)})."
    )


def other_judges(results: Results, headline_judge: str) -> list[str]:
    """Judges with win rates besides the headline one (on synthetic data, the oracle)."""
    if results.win_rates.empty:
        return []
    return sorted(
        str(j) for j in results.win_rates["judge"].dropna().unique() if j != headline_judge
    )
