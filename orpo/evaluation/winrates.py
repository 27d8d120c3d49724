"""Win rates of the paper's comparisons (Tables 2-3) and of the controls, from judges' rewards.

For every judge, model size and seed: ORPO (each lambda) vs SFT, ORPO vs SFT+DPO (each beta),
SFT+DPO (each beta) vs SFT, and every method vs the untrained base, by `orpo.metrics.win_rate`
over (prompts x K rounds) reward matrices (sample_index 0..K-1 is round k; the greedy answer, -1,
is not a round), plus a row pooled over seeds (seed -1, `pooled_win_rate`) when several seeds
have both cells. Only prompts with all K rewards on both sides count, and a pooled row keeps the
prompts every seed has, so its rows stay aligned by prompt. Comparisons that cannot be made are
skipped with a note.

Every row has a `comparison` kind:
    method            a verdict the experiment asks for (one family per judge and seed value)
    positive-control  SFT vs the base it started from: must read as a clear win
    negative-control  SFT vs its own resampled answers (another sampling seed) and, with several
                      seeds, SFT of the first seed vs SFT of the second: must read "no winner"

Multiplicity: within each family (one judge; one seed, or the pooled rows) the method rows'
p-values are Holm-adjusted (`p_holm`); the controls are checks of the machinery, not verdicts,
and stay out of the family. `detectable` is the smallest |win rate - 0.5| the row's prompts,
rounds and seeds detect with 80% power at the family's Bonferroni level (alpha / m), an upper
bound for Holm's.
"""

from __future__ import annotations

import math

import pandas as pd

from orpo.config import (
    BASE,
    RESAMPLED_SUFFIX,
    Cell,
    Experiment,
    cell_id,
    has_base_row,
    method_params,
)
from orpo.methods import OTHER_METHODS
from orpo.metrics import detectable_effect, holm_adjust, pooled_win_rate, win_rate
from orpo.report.tables import (
    METHOD,
    NEGATIVE_CONTROL,
    POOLED_SEED,
    POSITIVE_CONTROL,
    VERDICT_ALPHA,
)

POWER = 0.8  # for the detectable effect


def reward_matrix(rewards: pd.DataFrame, k: int) -> pd.DataFrame:
    """(prompts, K) rewards of one cell and judge, index prompt_id; only complete prompts."""
    rounds = rewards[rewards["sample_index"].between(0, k - 1)]
    matrix = rounds.pivot_table(
        index="prompt_id", columns="sample_index", values="reward", aggfunc="first"
    )
    matrix = matrix.reindex(columns=range(k))
    return matrix.dropna()


def comparisons(exp: Experiment, model: str, seed: int) -> list[tuple[Cell, Cell, str]]:
    """(A, B, kind) of the paper's comparisons and the positive control, one model and seed;
    each method beyond the paper's three (SimPO, CPO, IPO) against SFT and against ORPO."""

    def cell(stage, params=None, **knob):
        return Cell(
            id=cell_id(stage, model, seed, **knob), stage=stage, model=model, seed=seed,
            params=params or {}, **knob,
        )  # fmt: skip

    sft = cell("sft")
    orpos = [cell("orpo", orpo_lambda=lam) for lam in exp.orpo_lambdas]
    dpos = [cell("dpo", dpo_beta=beta) for beta in exp.dpo_betas]
    methods = set(exp.methods)
    pairs = []
    if {"orpo", "sft"} <= methods:
        pairs += [(o, sft) for o in orpos]
    if {"orpo", "dpo"} <= methods:
        pairs += [(o, d) for o in orpos for d in dpos]
    if {"dpo", "sft"} <= methods:
        pairs += [(d, sft) for d in dpos]
    others = [cell(m, params=method_params(exp, m)) for m in OTHER_METHODS if m in methods]
    pairs += [(o, sft) for o in others if "sft" in methods]
    pairs += [(o, other) for o in orpos if "orpo" in methods for other in others]
    found = [(a, b, METHOD) for a, b in pairs]
    if has_base_row(exp, model):  # every trained policy against the model it started from
        base = cell(BASE)
        found += [(sft, base, POSITIVE_CONTROL)] if "sft" in methods else []
        trained = (dpos if "dpo" in methods else []) + (orpos if "orpo" in methods else [])
        trained += others
        found += [(p, base, METHOD) for p in trained]
    return found


def negative_controls(exp: Experiment, model: str) -> list[tuple[Cell, Cell]]:
    """SFT against its resampled self, and SFT of the first two seeds against each other."""
    if "sft" not in exp.methods:
        return []
    first = exp.seeds[0]
    sft = Cell(id=cell_id("sft", model, first), stage="sft", model=model, seed=first)
    pairs = []
    if exp.eval.resample_control:
        pairs.append((sft, sft.model_copy(update={"id": sft.id + RESAMPLED_SUFFIX})))
    if len(exp.seeds) > 1:
        second = exp.seeds[1]
        pairs.append(
            (sft, Cell(id=cell_id("sft", model, second), stage="sft", model=model, seed=second))
        )
    return pairs


def _win_rate_row(a: Cell, b: Cell, judge: str, seed: int, result, kind: str) -> dict:
    pooled = seed == POOLED_SEED
    return {
        "model": a.model, "method_a": a.stage, "orpo_lambda_a": a.orpo_lambda,
        "dpo_beta_a": a.dpo_beta, "method_b": b.stage, "dpo_beta_b": b.dpo_beta, "judge": judge,
        "seed": seed, "win_rate": result.win_rate, "sd_rounds": result.sd_rounds,
        "ci_low": result.ci_low, "ci_high": result.ci_high, "n_prompts": result.n_prompts,
        "n_rounds": result.n_rounds, "n_seeds": result.n_seeds, "se": result.se, "df": result.df,
        "p_value": result.p_value, "comparison": kind, "seed_b": b.seed,
        "cell_a": None if pooled else a.id, "cell_b": None if pooled else b.id,
    }  # fmt: skip


class _Matrices:
    """Reward matrices by (cell, judge), and the note when a comparison cannot be made."""

    def __init__(self, rewards: pd.DataFrame, k: int, usable: set[str], notes: list[str]):
        self.k, self.usable, self.notes = k, usable, notes
        self.by_key = {
            key: reward_matrix(group, k)
            for key, group in rewards.groupby(["cell_id", "judge"], sort=False)
        }

    def pair(self, a: Cell, b: Cell, judge: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """A's and B's (shared prompts, K) rewards, or None with a note saying why not."""
        missing = [c.id for c in (a, b) if c.id not in self.usable]
        if missing:
            self.notes.append(
                f"{a.id} vs {b.id} skipped: {', '.join(missing)} failed or has no samples"
            )
            return None
        if (a.id, judge) not in self.by_key or (b.id, judge) not in self.by_key:
            self.notes.append(f"{judge}: {a.id} vs {b.id} skipped: no rewards")
            return None
        ma, mb = self.by_key[(a.id, judge)], self.by_key[(b.id, judge)]
        shared = ma.index.intersection(mb.index)
        if shared.empty:
            self.notes.append(
                f"{judge}: {a.id} vs {b.id} skipped: no prompt with all {self.k} rewards on "
                "both sides"
            )
            return None
        return ma.loc[shared], mb.loc[shared]


def _pooled(found: list[tuple[Cell, Cell, tuple]], n_boot: int):
    """The seeds' pairs restricted to the prompts every seed has, rows in one prompt order."""
    shared = found[0][2][0].index
    for _, _, (ma, _) in found[1:]:
        shared = shared.intersection(ma.index)
    if shared.empty:
        return None
    pairs = [(ma.loc[shared].to_numpy(), mb.loc[shared].to_numpy()) for _, _, (ma, mb) in found]
    return pooled_win_rate(pairs, n_bootstrap=n_boot)


def win_rate_rows(
    exp: Experiment, rewards: pd.DataFrame, usable: set[str], notes: list[str]
) -> list[dict]:
    """Every comparison and control, per seed and pooled, for every judge in `rewards`, with
    Holm-adjusted p-values and detectable effects per family."""
    k, n_boot = exp.eval.samples_per_prompt, exp.eval.n_bootstrap
    matrices = _Matrices(rewards, k, usable, notes)
    rows = []
    for judge in sorted(rewards["judge"].unique()):
        for model in exp.model_names:
            per_comparison: dict[tuple, list] = {}
            for seed in exp.seeds:
                for a, b, kind in comparisons(exp, model, seed):
                    pair = matrices.pair(a, b, judge)
                    if pair is None:
                        continue
                    result = win_rate(pair[0].to_numpy(), pair[1].to_numpy(), n_bootstrap=n_boot)
                    rows.append(_win_rate_row(a, b, judge, seed, result, kind))
                    variant = (a.stage, a.orpo_lambda, a.dpo_beta, b.stage, b.dpo_beta, kind)
                    per_comparison.setdefault(variant, []).append((a, b, pair))
            for variant, found in per_comparison.items():
                result = _pooled(found, n_boot) if len(found) > 1 else None
                if result is not None:
                    a, b, _ = found[0]
                    rows.append(_win_rate_row(a, b, judge, POOLED_SEED, result, variant[-1]))
            for a, b in negative_controls(exp, model):
                pair = matrices.pair(a, b, judge)
                if pair is not None:
                    result = win_rate(pair[0].to_numpy(), pair[1].to_numpy(), n_bootstrap=n_boot)
                    rows.append(_win_rate_row(a, b, judge, a.seed, result, NEGATIVE_CONTROL))
    return adjust_families(rows)


def adjust_families(rows: list[dict]) -> list[dict]:
    """Add p_holm (method rows; NaN for controls), family_size and detectable to every row."""
    families: dict[tuple, list[dict]] = {}
    for row in rows:
        if row["comparison"] == METHOD:
            families.setdefault((row["judge"], row["seed"]), []).append(row)
    for family in families.values():
        for row, adjusted in zip(family, holm_adjust([r["p_value"] for r in family]), strict=True):
            row.update(p_holm=adjusted, family_size=len(family))
    for row in rows:
        m = row.setdefault("family_size", 1)
        row.setdefault("p_holm", float("nan"))
        row["detectable"] = detectable_effect(
            row["se"], alpha=VERDICT_ALPHA / m, power=POWER, df=row.get("df", math.inf)
        )
    return rows
