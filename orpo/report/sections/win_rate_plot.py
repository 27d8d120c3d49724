"""Section 2: win rate across model sizes, one panel per comparison, with 95% CIs."""

from __future__ import annotations

from orpo.report import plots
from orpo.report.labels import ordered_models
from orpo.report.markup import Safe, figure, join, note
from orpo.report.sections.common import headline_rows, missing_note
from orpo.report.tables import Results

SECTION_ID = "win-rate-plot"
TITLE = "2. Win rate across model sizes"


def render(results: Results) -> Safe:
    missing = missing_note(results, "win_rates")
    if missing:
        return missing
    headline = headline_rows(results)
    rows = headline.rows
    uri = plots.win_rates_by_size(rows, ordered_models(rows, results.meta.models))
    if uri is None:
        return note("No win-rate rows to plot.")
    return join(
        [
            figure(
                uri,
                "Win rate per model size for each comparison",
                "each point is A's win rate against B (judge: "
                f'{headline.judge}); a line per λ or β ("vs β": the SFT+DPO it '
                "faced); bars are 95% CIs; above the dotted 50% line A wins. Compare how the "
                "gap moves as models grow, left to right.",
            ),
        ]
    )
