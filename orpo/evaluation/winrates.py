"""Win rates of the paper's comparisons (Tables 2-3) from judges' rewards of the samples.

For every judge, model size and seed: ORPO (each lambda) vs SFT, ORPO vs SFT+DPO (each beta),
SFT+DPO (each beta) vs SFT, and every method vs the untrained base where there is a base row, by `orpo.metrics.win_rate` over (prompts x K rounds) reward matrices
(sample_index 0..K-1 is round k; the greedy answer, -1, is not a round), plus a row pooled over
seeds (seed -1, `pooled_win_rate`) when several seeds have both cells. Only prompts with all K
rewards on both sides count. Comparisons that cannot be made are skipped with a note.
"""

from __future__ import annotations

import pandas as pd

from orpo.config import BASE, Cell, Experiment, cell_id, has_base_row
from orpo.metrics import pooled_win_rate, win_rate
from orpo.report.tables import POOLED_SEED


def reward_matrix(rewards: pd.DataFrame, k: int) -> pd.DataFrame:
    """(prompts, K) rewards of one cell and judge, index prompt_id; only complete prompts."""
    rounds = rewards[rewards["sample_index"].between(0, k - 1)]
    matrix = rounds.pivot_table(
        index="prompt_id", columns="sample_index", values="reward", aggfunc="first"
    )
    matrix = matrix.reindex(columns=range(k))
    return matrix.dropna()


def comparisons(exp: Experiment, model: str, seed: int) -> list[tuple[Cell, Cell]]:
    """(A, B) cell pairs of the paper's comparisons for one model size and seed."""

    def cell(stage, **knob):
        return Cell(
            id=cell_id(stage, model, seed, **knob), stage=stage, model=model, seed=seed, **knob
        )

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
    if has_base_row(exp, model):  # every trained policy against the model it started from
        base = cell(BASE)
        trained = ([sft] if "sft" in methods else []) + (dpos if "dpo" in methods else [])
        pairs += [(p, base) for p in trained + (orpos if "orpo" in methods else [])]
    return pairs


def _win_rate_row(a: Cell, b: Cell, judge: str, seed: int, result, pooled: bool) -> dict:
    return {
        "model": a.model, "method_a": a.stage, "orpo_lambda_a": a.orpo_lambda,
        "dpo_beta_a": a.dpo_beta, "method_b": b.stage, "dpo_beta_b": b.dpo_beta, "judge": judge,
        "seed": seed, "win_rate": result.win_rate, "sd_rounds": result.sd_rounds,
        "ci_low": result.ci_low, "ci_high": result.ci_high, "n_prompts": result.n_prompts,
        "n_rounds": result.n_rounds, "n_seeds": result.n_seeds,
        "cell_a": None if pooled else a.id, "cell_b": None if pooled else b.id,
    }  # fmt: skip


def win_rate_rows(
    exp: Experiment, rewards: pd.DataFrame, usable: set[str], notes: list[str]
) -> list[dict]:
    """Every comparison, per seed and pooled, for every judge in `rewards`."""
    k, n_boot = exp.eval.samples_per_prompt, exp.eval.n_bootstrap
    matrices = {
        key: reward_matrix(group, k)
        for key, group in rewards.groupby(["cell_id", "judge"], sort=False)
    }
    rows = []
    for judge in sorted(rewards["judge"].unique()):
        for model in exp.model_names:
            per_comparison: dict[tuple, list] = {}
            for seed in exp.seeds:
                for a, b in comparisons(exp, model, seed):
                    missing = [c.id for c in (a, b) if c.id not in usable]
                    if missing:
                        notes.append(
                            f"{a.id} vs {b.id} skipped: {', '.join(missing)} "
                            "failed or has no samples"
                        )
                        continue
                    if (a.id, judge) not in matrices or (b.id, judge) not in matrices:
                        notes.append(f"{judge}: {a.id} vs {b.id} skipped: no rewards")
                        continue
                    ma, mb = matrices[(a.id, judge)], matrices[(b.id, judge)]
                    shared = ma.index.intersection(mb.index)
                    if shared.empty:
                        notes.append(
                            f"{judge}: {a.id} vs {b.id} skipped: no prompt with all "
                            f"{k} rewards on both sides"
                        )
                        continue
                    pair = (ma.loc[shared].to_numpy(), mb.loc[shared].to_numpy())  # (P, K) each
                    result = win_rate(*pair, n_bootstrap=n_boot)
                    rows.append(_win_rate_row(a, b, judge, seed, result, pooled=False))
                    variant = (a.stage, a.orpo_lambda, a.dpo_beta, b.stage, b.dpo_beta)
                    per_comparison.setdefault(variant, []).append((a, b, pair))
            for found in per_comparison.values():
                if len(found) > 1:
                    result = pooled_win_rate([pair for _, _, pair in found], n_bootstrap=n_boot)
                    a, b, _ = found[0]
                    rows.append(_win_rate_row(a, b, judge, POOLED_SEED, result, pooled=True))
    return rows
