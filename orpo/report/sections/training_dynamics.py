"""Section 4: chosen and rejected log-probs over training for every method (paper Fig. 3)."""

from __future__ import annotations

from orpo.report import plots
from orpo.report.labels import Variant, policy_variants
from orpo.report.markup import Safe, figure, note
from orpo.report.sections.common import missing_note
from orpo.report.tables import Results

SECTION_ID = "training-dynamics"
TITLE = "4. Training dynamics"


def render(results: Results) -> Safe:
    missing = missing_note(results, "curves")
    if missing:
        return missing
    curves = results.curves
    variants = policy_variants(curves)
    uri = plots.training_dynamics(curves, results.meta.models, variants)
    if uri is None:
        return note("No eval/logp_chosen or eval/logp_rejected curves were logged.")
    return figure(
        uri,
        "Chosen and rejected log-probs over training per method",
        "held-out pairs, logged at every eval step from the first (step 0, before any update, "
        "where it was logged); a row per model size, a column per method and λ or β; blue is "
        "the chosen response's mean log-prob per token, red the rejected one's, averaged over "
        "seeds. The paper's finding: under SFT the rejected log-prob rises with the chosen one, "
        f"ORPO keeps it down. {_columns(variants)}",
    )


def _columns(variants: list[Variant]) -> str:
    # Named in the text too: the panel titles are pixels, invisible to search and screen readers.
    return "Columns, left to right: " + ", ".join(v.label for v in variants) + "."
