"""Section 1: the headline win-rate table, like the paper's Tables 2-3, with who won in words."""

from __future__ import annotations

import pandas as pd

from orpo.report.labels import method_label, model_rank
from orpo.report.markup import Safe, bullet_list, guide, join, note, paragraph, pct, table, tag
from orpo.report.paper import (
    PAPER_CITATION,
    PAPER_TABLE_NAMES,
    PAPER_WIN_RATES,
    Correspondence,
    correspondence,
)
from orpo.report.plots import COMPARISONS
from orpo.report.sections.common import (
    failed_cells_note,
    headline_rows,
    missing_note,
    other_judges,
    verdict,
    verdict_sentence,
)
from orpo.report.tables import POOLED_SEED, Results

SECTION_ID = "headline"
TITLE = "1. Headline: win rates"


def render(results: Results) -> Safe:
    missing = missing_note(results, "win_rates")
    if missing:
        return join([missing, failed_cells_note(results, "orpo") or ""])
    headline = headline_rows(results)
    rows = _sorted(headline.rows, results.meta.models)
    matches = {
        model: correspondence(results.meta.data_source, model, headline.judge)
        for model in rows["model"].unique()
    }
    show_paper_column = any(m.corresponds for m in matches.values())
    parts: list[object] = [
        paragraph(
            "Judge: ",
            tag("strong", headline.judge),
            ". Win rate of A against B on the same test prompts: a win counts 1, a tie 0.5. ",
            "Mean (sd) over sampling rounds, as the paper reports, and a 95% bootstrap CI "
            "over prompts.",
        ),
        table(_headers(show_paper_column), _table_rows(rows, matches, show_paper_column)),
        guide(
            "above 50% A beat B; the verdict is called only when the whole 95% CI is on one "
            "side of 50%. "
            + (
                "The paper column is the published figure for the same set-up."
                if show_paper_column
                else ""
            )
        ),
    ]
    if (rows["method_a"] == "orpo").sum() == 0:
        parts.append(note("No ORPO win rates in this run."))
        parts.append(failed_cells_note(results, "orpo") or "")
    parts += [tag("h3", "Who won"), bullet_list(verdict_sentence(r) for _, r in rows.iterrows())]
    parts += [note(c) for c in headline.caveats]
    parts.append(_paper_statement(matches, results.meta.data_source))
    parts += [_other_judge_table(results, judge) for judge in other_judges(results, headline.judge)]
    return join(parts)


def _other_judge_table(results: Results, judge: str) -> Safe:
    """The same comparisons by another judge: on synthetic data the oracle is ground truth."""
    rows = _sorted(headline_rows(results, judge).rows, results.meta.models)
    return join(
        [
            tag("h3", join(["The same comparisons judged by ", tag("code", judge)])),
            table(_headers(False), _table_rows(rows, {}, show_paper=False), class_="other-judge"),
            guide(
                "as the table above, by another judge; where the judges disagree on a verdict, "
                "trust the one that agrees more with held-out pairs (Judge quality section)."
            ),
        ]
    )


def _sorted(rows: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    order = {c: i for i, c in enumerate(COMPARISONS)}
    keyed = rows.assign(
        _model=rows["model"].map(model_rank(models)),
        _comparison=[
            order.get((a, b), 99) for a, b in zip(rows["method_a"], rows["method_b"], strict=True)
        ],
    )
    keyed = keyed.sort_values(["_model", "_comparison", "orpo_lambda_a"], na_position="first")
    return keyed.drop(columns=["_model", "_comparison"]).reset_index(drop=True)


def _headers(show_paper_column: bool) -> list[str]:
    headers = [
        "Model",
        "A",
        "B",
        "Seeds",
        "Win rate % mean (sd)",
        "95% CI",
        "Prompts × rounds",
        "Verdict",
    ]
    return headers + (["Paper %"] if show_paper_column else [])


def _table_rows(rows: pd.DataFrame, matches: dict[str, Correspondence], show_paper: bool):
    for _, row in rows.iterrows():
        short, kind = verdict(row)
        cells: list[object] = [
            row["model"],
            method_label(row["method_a"], row["orpo_lambda_a"]),
            method_label(row["method_b"]),
            "pooled" if row["seed"] == POOLED_SEED else f"seed {int(row['seed'])}",
            f"{pct(row['win_rate'])} ({pct(row['sd_rounds'])})",
            f"{pct(row['ci_low'])}–{pct(row['ci_high'])}",
            f"{_count(row['n_prompts'])} × {_count(row['n_rounds'])}",
            tag("span", short, class_=kind),
        ]
        if show_paper:
            cells.append(_paper_cell(row, matches[row["model"]]))
        yield cells


def _paper_cell(row, match: Correspondence) -> str:
    if row["method_a"] != "orpo":
        return "—"  # the paper reports only ORPO-vs-X win rates
    value = match.paper_win_rate(row["method_b"])
    return "—" if value is None else f"{value:.1f}"


def _count(value) -> str:
    return "—" if pd.isna(value) else str(int(value))


def _paper_statement(matches: dict[str, Correspondence], data_source: str) -> Safe:
    corresponding = sorted(m for m, c in matches.items() if c.corresponds)
    differing = {m: c for m, c in matches.items() if not c.corresponds}
    parts: list[object] = []
    if corresponding:
        table_name = PAPER_TABLE_NAMES[data_source]
        parts.append(
            paragraph(
                f"The paper's column is {table_name} of {PAPER_CITATION}, for ",
                ", ".join(corresponding),
                ": same data source, same OPT size, a reward-model judge. Training budgets and "
                "sampling may still differ.",
            )
        )
    if differing:
        reasons = sorted({reason for c in differing.values() for reason in c.differences})
        parts.append(
            note(
                "The set-up differs from the paper's for ",
                ", ".join(sorted(differing)),
                " (",
                "; ".join(reasons),
                "). The paper's numbers below are shown for reference only; "
                "they are not comparable to ours.",
            )
        )
        parts.append(_paper_reference_table())
    return join(parts)


def _paper_reference_table() -> Safe:
    rows = []
    for source, by_size in PAPER_WIN_RATES.items():
        for size, by_versus in by_size.items():
            rows.append(
                [
                    PAPER_TABLE_NAMES[source],
                    f"OPT-{size}",
                    f"{by_versus['sft']:.1f}",
                    f"{by_versus['dpo']:.1f}",
                ]
            )
    return join(
        [
            table(
                ["Paper table", "Model", "ORPO vs SFT %", "ORPO vs SFT+DPO %"],
                rows,
                class_="reference",
            ),
            guide(
                "the paper's published win rates of ORPO (reward-model judge, mean of 3 rounds); "
                "reference only."
            ),
        ]
    )
