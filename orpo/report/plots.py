"""The report's figures, each returned as an embedded PNG data URI (or None when there is no data).

Figures are built with `matplotlib.figure.Figure` on an explicit Agg canvas rather than through
pyplot: no global figure registry to leak memory into or to close, no GUI backend chosen behind
the caller's back, and safe to call from a worker thread of the orchestrator.
"""

from __future__ import annotations

import base64
import io
import math

import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orpo.report.labels import (
    Variant,
    knob_text,
    knob_values,
    method_label,
    model_rank,
    rows_of_variant,
    table_variants,
)
from orpo.report.tables import METRIC_LOGP_CHOSEN, METRIC_LOGP_REJECTED, is_missing

DPI = 90
PANEL_WIDTH, PANEL_HEIGHT = 3.4, 2.5  # inches per subplot
MAX_WIDTH = 13.0  # inches: about the width of the report's column at DPI
DODGE = 0.08  # x offset between lines sharing a category axis
COLOR_CHOSEN, COLOR_REJECTED = "#1f77b4", "#d62728"
COLOR_LOG_PR, COLOR_LOG_OR = "#7f7f7f", "#9467bd"

# A comparison is (method_a, method_b); the label says what is being won.
COMPARISONS = (
    ("orpo", "sft"), ("orpo", "dpo"), ("dpo", "sft"),
    ("sft", "base"), ("dpo", "base"), ("orpo", "base"),
)  # fmt: skip
COMPARISON_TITLES = {
    ("orpo", "sft"): "ORPO vs SFT",
    ("orpo", "dpo"): "ORPO vs SFT+DPO",
    ("dpo", "sft"): "SFT+DPO vs SFT",
    ("sft", "base"): "SFT vs base",
    ("dpo", "base"): "SFT+DPO vs base",
    ("orpo", "base"): "ORPO vs base",
}
# What tells two win-rate rows of one comparison and model apart: A's lambda, A's beta, B's beta.
WIN_RATE_KNOBS = ("orpo_lambda_a", "dpo_beta_a", "dpo_beta_b")


def new_figure(rows: int, cols: int, sharey: bool | str = False) -> tuple[Figure, list[list]]:
    width = min(MAX_WIDTH, PANEL_WIDTH * cols)
    fig = Figure(figsize=(width, PANEL_HEIGHT * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey)
    return fig, [list(row) for row in axes]


def to_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    fig.clear()  # release the artists now; the figure object itself is garbage once we return
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def win_rates_by_size(rows: pd.DataFrame, models: list[str]) -> str | None:
    """One panel per comparison: win rate (%) per model size, a line per variant (each ORPO
    lambda, each DPO beta on either side), 95% CI."""
    comparisons = [c for c in COMPARISONS if not _comparison_rows(rows, *c).empty]
    if not comparisons or not models:
        return None
    fig, axes = new_figure(1, len(comparisons))
    for ax, comparison in zip(axes[0], comparisons, strict=True):
        subset = _comparison_rows(rows, *comparison)
        lines = list(_by_knobs(subset, WIN_RATE_KNOBS))
        for i, (knobs, line) in enumerate(lines):
            line = line.sort_values("model", key=lambda s: s.map(model_rank(models)))
            # Nudge each line sideways so overlapping CIs stay readable.
            offset = DODGE * (i - (len(lines) - 1) / 2)
            x = [models.index(m) + offset for m in line["model"]]
            _errorbar(ax, x, line, label=_line_label(comparison[0], *knobs))
        ax.set_xlim(-0.5, len(models) - 0.5)
        ax.set_xticks(range(len(models)), models, rotation=20, fontsize=8)
        _style_win_rate_axis(ax, COMPARISON_TITLES[comparison])
    return to_data_uri(fig)


def win_rate_vs_lambda(rows: pd.DataFrame, models: list[str]) -> str | None:
    """One panel per ORPO comparison: win rate (%) against lambda, a line per model size (and
    per beta of the SFT+DPO it is compared with)."""
    comparisons = [c for c in COMPARISONS[:2] if not _comparison_rows(rows, *c).empty]
    if not comparisons:
        return None
    fig, axes = new_figure(1, len(comparisons))
    for ax, comparison in zip(axes[0], comparisons, strict=True):
        subset = _comparison_rows(rows, *comparison).dropna(subset=["orpo_lambda_a"])
        for model in sorted(subset["model"].unique(), key=model_rank(models)):
            for (dpo_beta_b,), line in _by_knobs(subset[subset["model"] == model], ["dpo_beta_b"]):
                line = line.sort_values("orpo_lambda_a")
                label = _join_label(str(model), knob_text(dpo_beta=dpo_beta_b))
                _errorbar(ax, list(line["orpo_lambda_a"]), line, label=label)
        ax.set_xlabel("λ (weight of the odds-ratio loss)", fontsize=8)
        _style_win_rate_axis(ax, COMPARISON_TITLES[comparison])
    return to_data_uri(fig)


def logp_per_lambda(curves: pd.DataFrame, models: list[str]) -> str | None:
    """Paper Fig. 9: ORPO's chosen (solid) and rejected (dashed) log-probs per lambda, per model."""
    orpo = _logp_curves(curves[curves["method"] == "orpo"])
    # A curve without a lambda has no place on a per-lambda figure.
    variants = [v for v in table_variants(orpo, ("orpo",)) if not is_missing(v.orpo_lambda)]
    if not variants:
        return None
    present = sorted(orpo["model"].unique(), key=model_rank(models))
    fig, axes = new_figure(1, len(present))
    colors = _palette(len(variants))
    for ax, model in zip(axes[0], present, strict=True):
        for color, variant in zip(colors, variants, strict=True):
            rows = rows_of_variant(orpo[orpo["model"] == model], *variant)
            label = knob_text(variant.orpo_lambda, variant.dpo_beta)
            _plot_metric(ax, rows, METRIC_LOGP_CHOSEN, color=color, label=label)
            _plot_metric(ax, rows, METRIC_LOGP_REJECTED, color=color, linestyle="--")
        _style_logp_axis(ax, str(model))
    _figure_legend(fig, axes, title="solid: chosen\ndashed: rejected", title_fontsize=7)
    return to_data_uri(fig)


def training_dynamics(
    curves: pd.DataFrame, models: list[str], variants: list[Variant]
) -> str | None:
    """Paper Fig. 3: chosen and rejected log-probs over training, a panel per model x variant."""
    fig = training_dynamics_figure(curves, models, variants)
    return None if fig is None else to_data_uri(fig)


def training_dynamics_figure(
    curves: pd.DataFrame, models: list[str], variants: list[Variant]
) -> Figure | None:
    """The figure of `training_dynamics`, before encoding, so its lines can be inspected.

    Each curve starts at its earliest logged step: step 0, the eval before any update, is where
    the methods start from, and the plot keeps it (a linear step axis, no falsy-step filter).
    """
    logp = _logp_curves(curves)
    if logp.empty or not variants:
        return None
    present = sorted(logp["model"].unique(), key=model_rank(models))
    # One y scale per model: SFT+DPO starts where SFT ended, and that offset is part of the story.
    fig, axes = new_figure(len(present), len(variants), sharey="row")
    for row, model in zip(axes, present, strict=True):
        of_model = logp[logp["model"] == model]
        for ax, variant in zip(row, variants, strict=True):
            rows = rows_of_variant(of_model, *variant)
            if rows.empty:
                _empty_panel(ax, "no curve logged")
            _plot_metric(ax, rows, METRIC_LOGP_CHOSEN, color=COLOR_CHOSEN, label="chosen")
            _plot_metric(ax, rows, METRIC_LOGP_REJECTED, color=COLOR_REJECTED, label="rejected")
            _style_logp_axis(ax, f"{model}: {variant.label}")
    _figure_legend(fig, axes)
    return fig


def logratio_histograms(
    logratios: pd.DataFrame, models: list[str], variants: list[Variant]
) -> str | None:
    """Paper Sec. 7.1: log probability ratio vs log odds ratio over held-out pairs, per panel."""
    if logratios.empty or not variants:
        return None
    present = sorted(logratios["model"].unique(), key=model_rank(models))
    fig, axes = new_figure(len(present), len(variants))
    for row, model in zip(axes, present, strict=True):
        of_model = logratios[logratios["model"] == model]
        for ax, variant in zip(row, variants, strict=True):
            pairs = rows_of_variant(of_model, *variant)
            ax.set_title(f"{model}: {variant.label}", fontsize=8)
            ax.tick_params(labelsize=7)
            if pairs.empty:
                _empty_panel(ax, "no log-probs")
                continue
            both = pd.concat([pairs["log_prob_ratio"], pairs["log_odds_ratio"]]).dropna()
            if both.empty:
                _empty_panel(ax, "no finite log-probs")
                continue
            bins = _shared_bins(both)
            ax.hist(
                pairs["log_prob_ratio"].dropna(),
                bins=bins,
                color=COLOR_LOG_PR,
                alpha=0.6,
                histtype="stepfilled",  # one polygon, not a patch per bin: much faster to draw
                label="log prob. ratio",
            )
            ax.hist(
                pairs["log_odds_ratio"].dropna(),
                bins=bins,
                color=COLOR_LOG_OR,
                histtype="step",
                linewidth=1.5,
                label="log odds ratio",
            )
            ax.axvline(0.0, color="black", linewidth=0.6)
    _figure_legend(fig, axes)
    return to_data_uri(fig)


def _figure_legend(fig: Figure, axes: list[list], **style) -> None:
    """One legend beside the grid, from the first panel that drew anything (some may be empty).

    Outside the panels: the curves fill them, and an inside legend would hide some.
    """
    for ax in (ax for row in axes for ax in row):
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", fontsize=7, **style)
            return


def _comparison_rows(rows: pd.DataFrame, method_a: str, method_b: str) -> pd.DataFrame:
    return rows[(rows["method_a"] == method_a) & (rows["method_b"] == method_b)]


def _by_knobs(rows: pd.DataFrame, columns):
    """Split rows into one group per combination of knob values, a missing knob first.

    NaN groups are groups too (SFT+DPO vs SFT has no lambda); a table without a knob column
    (written before betas were recorded) reads as NaN there, so it still gives one group.
    """
    knobs = pd.DataFrame({column: knob_values(rows, column) for column in columns})
    positions = knobs.groupby(list(columns), dropna=False, sort=False).indices
    # pandas keys a one-column grouping by the bare value: make every key a tuple.
    groups = {key if isinstance(key, tuple) else (key,): at for key, at in positions.items()}
    for key in sorted(groups, key=lambda k: tuple(-1.0 if is_missing(v) else v for v in k)):
        yield key, rows.iloc[groups[key]]


def _line_label(method_a: str, orpo_lambda_a: float, dpo_beta_a: float, dpo_beta_b: float) -> str:
    """Within one comparison's panel: A's knobs ("λ=0.1", "β=0.5"), then B's beta if any."""
    own = knob_text(orpo_lambda_a, dpo_beta_a) or method_label(method_a)
    return _join_label(own, knob_text(dpo_beta=dpo_beta_b))


def _join_label(own: str, opponent: str) -> str:
    return f"{own} vs {opponent}" if opponent else own


def _errorbar(ax, x: list, rows: pd.DataFrame, label: str) -> None:
    y = 100 * rows["win_rate"].to_numpy(dtype=float)
    low = 100 * rows["ci_low"].to_numpy(dtype=float)
    high = 100 * rows["ci_high"].to_numpy(dtype=float)
    # A missing CI draws no bar rather than a NaN that would hide the point.
    below = [0.0 if math.isnan(v) else max(0.0, y_ - v) for y_, v in zip(y, low, strict=True)]
    above = [0.0 if math.isnan(v) else max(0.0, v - y_) for y_, v in zip(y, high, strict=True)]
    ax.errorbar(x, y, yerr=[below, above], marker="o", markersize=4, capsize=3, label=label)


def _style_win_rate_axis(ax, title: str) -> None:
    ax.axhline(50.0, color="gray", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 100)
    ax.set_ylabel("win rate (%)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)


def _logp_curves(curves: pd.DataFrame) -> pd.DataFrame:
    return curves[curves["metric"].isin([METRIC_LOGP_CHOSEN, METRIC_LOGP_REJECTED])]


def _plot_metric(ax, rows: pd.DataFrame, metric: str, **style) -> None:
    """Plot one metric over steps, averaged over seeds (cells of one variant share a step grid).

    Every logged step is drawn, step 0 included: it is the eval before any update.
    """
    series = rows[rows["metric"] == metric].groupby("step")["value"].mean()
    if not series.empty:
        ax.plot(series.index, series.to_numpy(), linewidth=1.3, **style)


def _style_logp_axis(ax, title: str) -> None:
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("step", fontsize=7)
    ax.set_ylabel("mean log-prob / token", fontsize=7)
    ax.tick_params(labelsize=7)


def _empty_panel(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, fontsize=8)


def _shared_bins(values: pd.Series, count: int = 30) -> list[float]:
    low, high = float(values.min()), float(values.max())
    if low == high:  # all equal: give the single value a visible bin
        low, high = low - 0.5, high + 0.5
    step = (high - low) / count
    return [low + i * step for i in range(count + 1)]


def _palette(n: int) -> list:
    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(1, n - 1)) for i in range(n)]
