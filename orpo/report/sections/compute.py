"""Section 7: compute per method, and the whole-pipeline cost of ORPO vs SFT then DPO."""

from __future__ import annotations

import pandas as pd

from orpo.methods import OTHER_METHODS, starts_from_sft
from orpo.report.labels import (
    method_label,
    model_rank,
    ordered_models,
    rows_of_variant,
    table_variants,
)
from orpo.report.markup import Safe, guide, join, note, num, table, tag
from orpo.report.sections.common import missing_note
from orpo.report.tables import Results
from orpo.timing import PHASE_LABELS, breakdown

SECTION_ID = "compute"
TITLE = "7. Compute"

COST_COLUMNS = ("forward_passes", "tokens", "wall_seconds", "peak_rss_mb")


def render(results: Results) -> Safe:
    missing = missing_note(results, "cells")
    if missing:
        return missing
    finished = results.cells[results.cells["status"] != "failed"]
    if finished.empty:
        return note("Every cell failed: there is no compute to report.")
    return join(
        [
            _per_method_table(finished, results.meta.models),
            tag("h3", "Whole pipeline: ORPO vs SFT then DPO"),
            _pipeline_table(finished, results.meta.models),
            tag("h3", "Where the time goes"),
            _time_table(results),
        ]
    )


def _time_table(results: Results) -> Safe:
    rows = breakdown(results.timings.to_dict("records"))
    if not rows:
        return note("No phase timings were recorded (results from before they existed).")
    return join(
        [
            table(
                ["Phase", "Cells or rows", "Seconds", "Share", "Mean s each"],
                [
                    [
                        PHASE_LABELS[r["phase"]],
                        r["items"],
                        num(r["seconds"], ",.1f"),
                        num(100 * r["share"], ".1f") + "%",
                        num(r["mean_seconds"], ",.2f"),
                    ]
                    for r in rows
                ],
            ),
            guide(
                "seconds summed over the reported cells and evaluated rows, each phase as the cell "
                "or row took it when it ran (a cell reused from an earlier run counts what it took "
                "then); cells that ran in parallel sum beyond the run's wall time. Start-up runs "
                "from the launch to the worker's first line of training code; set-up loads data, "
                "model and engine; optimizer steps are what the benchmark times."
            ),
        ]
    )


def _per_method_table(cells: pd.DataFrame, models: list[str]) -> Safe:
    rows = []
    for model in ordered_models(cells, models):
        of_model = cells[cells["model"] == model]
        for variant in table_variants(of_model):
            cost = _mean_cost(rows_of_variant(of_model, *variant))
            rows.append([model, variant.label, cost["cells"], *_cost_cells(cost)])
    return join(
        [
            table(
                ["Model", "Method", "Cells", "Forward passes", "Tokens", "Wall s", "Peak RSS MB"],
                rows,
            ),
            guide(
                "mean per finished cell (completed or cached; failed cells left out). ORPO, "
                "SimPO and CPO need one forward pass per batch; DPO and IPO also need the "
                "reference's log-probs, one pass over the data per SFT checkpoint (cached)."
            ),
        ]
    )


def _pipeline_table(cells: pd.DataFrame, models: list[str]) -> Safe:
    rows = []
    for model in sorted(cells["model"].unique(), key=model_rank(models)):
        of_model = cells[cells["model"] == model]
        sft, dpo = of_model[of_model["method"] == "sft"], of_model[of_model["method"] == "dpo"]
        baseline = None
        if not sft.empty and not dpo.empty:
            # every beta costs the same to train: the baseline is their mean
            baseline = _pipeline_cost(_mean_cost(sft), _mean_cost(dpo))
            rows.append([model, "SFT then SFT+DPO", *_cost_cells(baseline), "1.00", "1.00"])
        for orpo_lambda in sorted(
            of_model.loc[of_model["method"] == "orpo", "orpo_lambda"].unique()
        ):
            cost = _mean_cost(rows_of_variant(of_model, "orpo", orpo_lambda))
            rows.append(
                [
                    model,
                    method_label("orpo", orpo_lambda),
                    *_cost_cells(cost),
                    _ratio(cost, baseline, "forward_passes"),
                    _ratio(cost, baseline, "wall_seconds"),
                ]
            )
        for name in OTHER_METHODS:  # SimPO, CPO, IPO: with their SFT cell when they start there
            own = of_model[of_model["method"] == name]
            if own.empty or (starts_from_sft(name) and sft.empty):
                continue
            cost = _mean_cost(own)
            if starts_from_sft(name):
                cost = _pipeline_cost(_mean_cost(sft), cost)
            rows.append(
                [
                    model,
                    f"SFT then {method_label(name)}"
                    if starts_from_sft(name)
                    else method_label(name),
                    *_cost_cells(cost),
                    _ratio(cost, baseline, "forward_passes"),
                    _ratio(cost, baseline, "wall_seconds"),
                ]
            )
    if not rows:
        return note("No finished SFT, SFT+DPO or ORPO cells to compare.")
    headers = [
        "Model",
        "Pipeline",
        "Forward passes",
        "Tokens",
        "Wall s",
        "Peak RSS MB",
        "Passes vs SFT+DPO",
        "Wall vs SFT+DPO",
    ]
    return join(
        [
            table(headers, rows),
            guide(
                "SFT+DPO costs its SFT cell plus its DPO cell (sums; peak memory is the larger); "
                "ORPO is one cell from the base model; a method that starts from SFT (SimPO, CPO, "
                "IPO) counts its SFT cell too. A ratio below 1 means cheaper than SFT+DPO. "
                "The shared pretrained base and the reward-model judge are not counted."
            ),
        ]
    )


def _mean_cost(cells: pd.DataFrame) -> dict[str, float]:
    cost = {column: float(cells[column].mean()) for column in COST_COLUMNS}
    cost["cells"] = len(cells)
    return cost


def _pipeline_cost(sft: dict[str, float], dpo: dict[str, float]) -> dict[str, float]:
    summed = {c: sft[c] + dpo[c] for c in ("forward_passes", "tokens", "wall_seconds")}
    summed["peak_rss_mb"] = max(sft["peak_rss_mb"], dpo["peak_rss_mb"])
    return summed


def _cost_cells(cost: dict[str, float]) -> list[str]:
    return [
        num(cost["forward_passes"], ",.0f"),
        num(cost["tokens"], ",.0f"),
        num(cost["wall_seconds"], ",.1f"),
        num(cost["peak_rss_mb"], ",.0f"),
    ]


def _ratio(cost: dict[str, float], baseline: dict[str, float] | None, column: str) -> str:
    if baseline is None or not baseline[column]:
        return "—"
    return num(cost[column] / baseline[column], ".2f")
