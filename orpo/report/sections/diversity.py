"""Section 6: lexical diversity (PID, AID, distinct-n) beside the paper's Table 4."""

from __future__ import annotations

from orpo.report.labels import method_label, ordered_models, policy_variants, rows_of_variant
from orpo.report.markup import Safe, guide, join, note, num, paragraph, table, tag
from orpo.report.paper import PAPER_CITATION, PAPER_DIVERSITY
from orpo.report.sections.common import missing_note
from orpo.report.tables import Results

SECTION_ID = "diversity"
TITLE = "6. Lexical diversity"

METRICS = ("pid", "aid", "distinct_1", "distinct_2")


def render(results: Results) -> Safe:
    missing = missing_note(results, "diversity")
    parts: list[object] = [missing] if missing else [_our_table(results)]
    parts.append(_paper_table())
    return join(parts)


def _our_table(results: Results) -> Safe:
    diversity = results.diversity
    rows = []
    for model in ordered_models(diversity, results.meta.models):
        of_model = diversity[diversity["model"] == model]
        # One row per variant: two betas (or lambdas) averaged would describe no trained model.
        for variant in policy_variants(of_model):
            cells = rows_of_variant(of_model, *variant)
            means = [num(cells[m].mean(), ".4f") for m in METRICS]
            rows.append([model, variant.label, *means, cells["seed"].nunique()])
    if not rows:
        return note("The diversity table has no rows for SFT, SFT+DPO or ORPO.")
    embedders = ", ".join(sorted({str(e) for e in diversity["embedder"].dropna().unique()}))
    return join(
        [
            paragraph("Embedder: ", tag("strong", embedders or "not recorded"), "."),
            table(["Model", "Method", "PID", "AID", "distinct-1", "distinct-2", "Seeds"], rows),
            guide(
                "PID: mean cosine similarity among one prompt's samples; AID: among the first "
                "samples of different prompts. Lower PID/AID = more diverse; higher distinct-n "
                "(share of unique n-grams) = more diverse. A row per method and λ or β; means over "
                "seeds."
            ),
        ]
    )


def _paper_table() -> Safe:
    rows = [
        [d.model, method_label(d.method), f"{d.pid:.4f}", f"{d.aid:.4f}"] for d in PAPER_DIVERSITY
    ]
    return join(
        [
            tag("h3", "The paper's Table 4 (reference)"),
            table(["Model", "Method", "PID", "AID"], rows, class_="reference"),
            guide(
                f"{PAPER_CITATION}, UltraFeedback, Phi-2 (2.7B) and Llama-2 (7B): models of "
                "other sizes and families than ours, so not comparable; read the direction "
                "(ORPO: higher PID, lower AID than SFT+DPO), not the values."
            ),
        ]
    )
