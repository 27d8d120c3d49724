"""Section 5: log odds ratio vs log probability ratio over held-out pairs (paper Sec. 7.1)."""

from __future__ import annotations

from orpo.report import plots
from orpo.report.labels import Variant, ordered_models, policy_variants, rows_of_variant
from orpo.report.markup import Safe, figure, guide, join, note, num, pct, table
from orpo.report.sections.common import missing_note
from orpo.report.tables import Results

SECTION_ID = "log-ratios"
TITLE = "5. Log odds ratio vs log probability ratio"


def render(results: Results) -> Safe:
    missing = missing_note(results, "logratios")
    if missing:
        return missing
    logratios = results.logratios
    variants = policy_variants(logratios)
    uri = plots.logratio_histograms(logratios, results.meta.models, variants)
    if uri is None:
        return note("No per-pair log-probs from trained models.")
    return join(
        [
            figure(
                uri,
                "Histograms of log probability ratio and log odds ratio",
                "per held-out pair, from the trained model's own log-probs: grey is "
                "log P(chosen)/P(rejected), purple the log odds ratio. Right of 0 the model prefers "
                "the chosen response. The paper's point: the probability ratio is far more "
                "concentrated, so a loss on the odds ratio contrasts the pair more gently.",
            ),
            _summary_table(results, variants),
        ]
    )


def _summary_table(results: Results, variants: list[Variant]) -> Safe:
    logratios = results.logratios
    rows = []
    for model in ordered_models(logratios, results.meta.models):
        of_model = logratios[logratios["model"] == model]
        for variant in variants:
            pairs = rows_of_variant(of_model, *variant)
            if pairs.empty:
                continue
            pr, odds = pairs["log_prob_ratio"], pairs["log_odds_ratio"]
            rows.append(
                [
                    model,
                    variant.label,
                    len(pairs),
                    f"{num(pr.mean())} ± {num(pr.std())}",
                    f"{num(odds.mean())} ± {num(odds.std())}",
                    pct((odds > 0).mean()),
                ]
            )
    headers = [
        "Model",
        "Method",
        "Pairs",
        "log prob. ratio mean ± sd",
        "log odds ratio mean ± sd",
        "Chosen preferred %",
    ]
    return join(
        [
            table(headers, rows),
            guide(
                "a row per method and λ or β, pooled over seeds; 'chosen preferred' is the share "
                "of pairs with a positive log odds ratio (the same pairs have a positive log "
                "probability ratio)."
            ),
        ]
    )
