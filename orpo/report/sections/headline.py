"""Section 1: the headline win-rate table, like the paper's Tables 2-3, with who won in words."""

from __future__ import annotations

import pandas as pd

from orpo.report.labels import model_rank
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
    judge_ranking,
    missing_note,
    other_judges,
    raw_verdict,
    variant_a_label,
    variant_b_label,
    verdict,
    verdict_sentence,
    weak_judge_note,
)
from orpo.report.tables import NEGATIVE_CONTROL, POOLED_SEED, POSITIVE_CONTROL, Results

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
        _judge_ranking(results, headline.judge),
        _controls(results, headline.judge),
        tag("h3", "Verdicts"),
        paragraph(
            "Judge: ",
            tag("strong", headline.judge),
            ". Win rate of A against B on the same test prompts: a win counts 1, a tie 0.5. ",
            "Mean (sd) over sampling rounds, as the paper reports, and a 95% interval over "
            "prompts (and training seeds, when pooled).",
        ),
        weak_judge_note(results, headline.judge) or "",
        table(_headers(show_paper_column), _table_rows(rows, matches, show_paper_column)),
        guide(
            "above 50% A beat B. A winner is named only when the 95% CI is on one side of 50% "
            "and the Holm-adjusted p-value is below 0.05: Holm's method holds the chance of any "
            "false verdict among all of this judge's comparisons (one family per seed, or the "
            "pooled rows) at 5%. ±detectable: the smallest difference from 50% the comparison's "
            "prompts × rounds × seeds detect with 80% power at the family's level. "
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


def _judge_ranking(results: Results, headline_judge: str) -> Safe:
    rows = []
    for standing in judge_ranking(results):
        label = (
            join([standing.judge, " ", tag("span", "(headline)", class_="tag")])
            if standing.judge == headline_judge
            else standing.judge
        )
        quality = "weak: read with care" if standing.weak else "good"
        rows.append([label, pct(standing.agreement), standing.basis, quality])
    return join(
        [
            tag("h3", "Judges, best first"),
            table(["Judge", "Agreement with ground truth %", "Measured against", "Quality"], rows),
            guide(
                "the headline judge is the one that agrees best with ground truth: on synthetic "
                "data the oracle, which grades every answer against the known solution; "
                "otherwise the judge that best orders the held-out preference pairs. A judge "
                "below 70% agreement is flagged as weak wherever its numbers appear."
            ),
        ]
    )


_EXPECTED = {POSITIVE_CONTROL: "win", NEGATIVE_CONTROL: "tie"}
_CONTROL_NAMES = {
    POSITIVE_CONTROL: "positive: SFT vs the base it started from",
    NEGATIVE_CONTROL: "negative: SFT vs SFT",
}


def _controls(results: Results, judge: str) -> Safe:
    """The checks on the machinery itself: it must see a real gap and must not invent one."""
    rows, failed = [], []
    for kind in (POSITIVE_CONTROL, NEGATIVE_CONTROL):
        found = headline_rows(results, judge, kind=kind).rows
        for _, row in _sorted(found, results.meta.models).iterrows() if not found.empty else []:
            expected = _EXPECTED[kind]
            as_expected = raw_verdict(row) == expected
            if not as_expected:
                failed.append(f"{row['model']}: {_CONTROL_NAMES[kind]}")
            rows.append(
                [
                    _CONTROL_NAMES[kind],
                    row["model"],
                    variant_a_label(row),
                    variant_b_label(row),
                    _seeds(row),
                    pct(row["win_rate"]),
                    f"{pct(row['ci_low'])}–{pct(row['ci_high'])}",
                    "a clear win" if expected == "win" else "no clear winner",
                    tag("span", "as expected", class_="win")
                    if as_expected
                    else tag("span", "NOT as expected", class_="loss"),
                ]
            )
    if not rows:
        return join(
            [
                tag("h3", "Controls"),
                note(
                    "No controls in this run (they need SFT, a base row and the resampled SFT "
                    "answers: eval.base_row and eval.resample_control)."
                ),
            ]
        )
    headers = ["Control", "Model", "A", "B", "Seeds", "Win rate %", "95% CI", "Expected", ""]
    parts: list[object] = [
        tag("h3", "Controls"),
        table(headers, rows),
        guide(
            "the positive control must show a clear win (the judge and the intervals can see a "
            "real difference); the negative controls compare SFT with its own answers drawn "
            "with another sampling seed, and with the SFT of another training seed, and must "
            "show no clear winner (the machinery does not invent one). Each control is judged "
            "by its own 95% CI, without multiplicity adjustment."
        ),
    ]
    if failed:
        parts.append(
            note(
                "A control did not come out as expected (",
                "; ".join(failed),
                "): the verdicts below deserve less trust. A negative control across training "
                "seeds can fail honestly when seeds really train different models; one against "
                "resampled answers should not, beyond the 5% chance of any interval.",
            )
        )
    return join(parts)


def _other_judge_table(results: Results, judge: str) -> Safe:
    """The same comparisons by another judge, with its quality flag where it is weak."""
    rows = _sorted(headline_rows(results, judge).rows, results.meta.models)
    return join(
        [
            tag("h3", join(["The same comparisons judged by ", tag("code", judge)])),
            weak_judge_note(results, judge) or "",
            table(_headers(False), _table_rows(rows, {}, show_paper=False), class_="other-judge"),
            guide(
                "as the verdicts above, by another judge; where the judges disagree, trust the "
                "one higher in the judge ranking."
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
    keyed = keyed.sort_values(
        ["_model", "_comparison", "orpo_lambda_a", "dpo_beta_a", "dpo_beta_b"], na_position="first"
    )
    return keyed.drop(columns=["_model", "_comparison"]).reset_index(drop=True)


def _headers(show_paper_column: bool) -> list[str]:
    headers = [
        "Model",
        "A",
        "B",
        "Seeds",
        "Win rate % mean (sd)",
        "95% CI",
        "p",
        "p (Holm)",
        "±detectable",
        "Prompts × rounds",
        "Verdict",
    ]
    return headers + (["Paper %"] if show_paper_column else [])


def _seeds(row) -> str:
    if row["seed"] == POOLED_SEED:
        return f"pooled ({_count(row.get('n_seeds'))})"
    return f"seed {int(row['seed'])}"


def _p(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.3g}"


def _table_rows(rows: pd.DataFrame, matches: dict[str, Correspondence], show_paper: bool):
    for _, row in rows.iterrows():
        short, kind = verdict(row)
        cells: list[object] = [
            row["model"],
            variant_a_label(row),
            variant_b_label(row),
            _seeds(row),
            f"{pct(row['win_rate'])} ({pct(row['sd_rounds'])})",
            f"{pct(row['ci_low'])}–{pct(row['ci_high'])}",
            _p(row.get("p_value")),
            _p(row.get("p_holm")),
            pct(row.get("detectable")),
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
