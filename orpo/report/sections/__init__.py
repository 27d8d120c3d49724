"""The report's sections, in reading order. Each module has SECTION_ID, TITLE and render()."""

from __future__ import annotations

from orpo.report.sections import (
    cells,
    compute,
    diversity,
    headline,
    judges,
    lambda_ablation,
    log_ratios,
    samples,
    training_dynamics,
    win_rate_plot,
)

SECTIONS = (
    headline,
    win_rate_plot,
    lambda_ablation,
    training_dynamics,
    log_ratios,
    diversity,
    compute,
    judges,
    cells,
    samples,
)
SECTION_IDS = tuple(s.SECTION_ID for s in SECTIONS)

__all__ = ["SECTIONS", "SECTION_IDS"]
