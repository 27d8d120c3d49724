"""Section 3: the lambda ablation (paper App. E, Fig. 9): win rate and log-probs per lambda."""

from __future__ import annotations

from orpo.report import plots
from orpo.report.labels import ordered_models
from orpo.report.markup import Safe, figure, join, note
from orpo.report.sections.common import failed_cells_note, headline_rows, missing_note
from orpo.report.tables import Results

SECTION_ID = "lambda-ablation"
TITLE = "3. λ ablation"


def render(results: Results) -> Safe:
    return join([_win_rate_vs_lambda(results), _logp_per_lambda(results)])


def _win_rate_vs_lambda(results: Results) -> Safe:
    missing = missing_note(results, "win_rates")
    if missing:
        return missing
    rows = headline_rows(results).rows
    orpo_rows = rows[rows["method_a"] == "orpo"]
    uri = plots.win_rate_vs_lambda(orpo_rows, ordered_models(orpo_rows, results.meta.models))
    if uri is None:
        return join(
            [note("No ORPO win rates, so no λ ablation."), failed_cells_note(results, "orpo") or ""]
        )
    parts: list[object] = [
        figure(
            uri,
            "ORPO win rate against lambda",
            "each line is a model size (against SFT+DPO, one per β it was trained with); x is "
            "λ, y ORPO's win rate with its 95% CI. A line that "
            "peaks in the middle means both too little and too much odds-ratio weight hurt.",
        )
    ]
    if orpo_rows["orpo_lambda_a"].nunique() < 2:
        parts.append(note("Only one λ in this experiment: there is no ablation to read."))
    return join(parts)


def _logp_per_lambda(results: Results) -> Safe:
    missing = missing_note(results, "curves")
    if missing:
        return missing
    uri = plots.logp_per_lambda(results.curves, results.meta.models)
    if uri is None:
        return note("No ORPO curves (eval/logp_chosen, eval/logp_rejected) logged.")
    return figure(
        uri,
        "ORPO chosen and rejected log-probs over training per lambda",
        "colour is λ; solid is the chosen response's mean log-prob per token, dashed the "
        "rejected one's. The paper (Fig. 9) finds a larger λ widens the gap, and at λ=1 "
        "pulls the chosen log-prob down too.",
    )
