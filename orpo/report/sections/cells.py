"""Section 9: every cell of the grid, its status, key metrics and MLflow run; failures' errors."""

from __future__ import annotations

import pandas as pd

from orpo.report.labels import METHOD_ORDER, format_number, method_label, model_rank
from orpo.report.markup import (
    Safe,
    guide,
    join,
    num,
    paragraph,
    preformatted,
    run_link,
    table,
    tag,
)
from orpo.report.sections.common import missing_note
from orpo.report.tables import Results, is_missing

SECTION_ID = "cells"
TITLE = "9. Cells"

MAX_ERROR_CHARS = 4000  # a traceback's tail is what explains it; keep the page light


def render(results: Results) -> Safe:
    missing = missing_note(results, "cells")
    if missing:
        return missing
    cells = _sorted(results.cells, results.meta.models)
    counts = cells["status"].value_counts()
    summary = ", ".join(
        f"{counts[s]} {s}" for s in ("completed", "cached", "failed") if s in counts
    )
    parts: list[object] = [
        paragraph(f"{len(cells)} cells: {summary}."),
        table(
            [
                "Cell",
                "Method",
                "Model",
                "λ",
                "β",
                "Seed",
                "Status",
                "Steps",
                "Best eval loss",
                "Wall s",
                "Train pairs: prompt cut / response cut / dropped",
                "MLflow run",
            ],
            (_row(cell) for _, cell in cells.iterrows()),
            class_="cells",
        ),
        guide(
            "one row per (method, model, λ, seed) cell; 'cached' cells were reused from an "
            "earlier run with the same configuration. Prompts over data.max_prompt_length are "
            "cut from the left, responses on the right (EOS kept); a pair with no room for a "
            "response is dropped. The run link opens the cell in MLflow."
        ),
    ]
    failed = cells[cells["status"] == "failed"]
    if not failed.empty:
        parts.append(tag("h3", "Failed cells"))
        for _, cell in failed.iterrows():
            parts.append(
                tag(
                    "div",
                    join(
                        [
                            tag(
                                "p",
                                join(
                                    [
                                        tag("strong", cell["cell_id"]),
                                        " ",
                                        run_link(cell["mlflow_run_url"], "MLflow run"),
                                    ]
                                ),
                            ),
                            preformatted(_error_text(cell["error"])),
                        ]
                    ),
                    class_="failure",
                )
            )
    return join(parts)


def _sorted(cells: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    keyed = cells.assign(
        _model=cells["model"].map(model_rank(models)),
        _method=cells["method"].map(method_rank),
    )
    keyed = keyed.sort_values(
        ["_model", "_method", "orpo_lambda", "dpo_beta", "seed", "cell_id"], na_position="first"
    )
    return keyed.drop(columns=["_model", "_method"])


def _row(cell) -> list[object]:
    status = cell["status"]
    return [
        tag("code", cell["cell_id"]),
        method_label(cell["method"]),
        cell["model"],
        _param(cell["orpo_lambda"]),
        _param(cell["dpo_beta"]),
        _int(cell["seed"]),
        tag("span", status, class_=f"status-{status}"),
        _int(cell["steps"]),
        num(cell["best_eval_loss"], ".4f"),
        num(cell["wall_seconds"], ",.1f"),
        "—" if is_missing(cell.get("truncation")) else str(cell["truncation"]),
        run_link(cell["mlflow_run_url"], "run") if not is_missing(cell["mlflow_run_url"]) else "—",
    ]


def _param(value) -> str:
    return "—" if is_missing(value) else format_number(float(value))


def _int(value) -> str:
    return "—" if is_missing(value) else str(int(value))


def _error_text(error) -> str:
    if is_missing(error) or not str(error).strip():
        return "(no error message recorded)"
    text = str(error)
    if len(text) > MAX_ERROR_CHARS:
        return "… (truncated) …\n" + text[-MAX_ERROR_CHARS:]
    return text
