"""Section 8: how far to trust the judge: agreement with held-out pairs and with the oracle."""

from __future__ import annotations

import pandas as pd

from orpo.report.markup import Safe, guide, join, pct, table, tag
from orpo.report.sections.common import headline_judge, judge_ranking, missing_note
from orpo.report.tables import Results

SECTION_ID = "judges"
TITLE = "8. Judge quality"


def render(results: Results) -> Safe:
    missing = missing_note(results, "judges")
    if missing:
        return missing
    rows = []
    headline = headline_judge(results)
    weak = {s.judge for s in judge_ranking(results) if s.weak}
    for _, judge in results.judges.sort_values("judge").iterrows():
        name = judge["judge"]
        flags = [" ", tag("span", "(headline judge)", class_="tag")] if name == headline else []
        flags += [" ", tag("span", "(weak)", class_="loss")] if name in weak else []
        label = join([name, *flags]) if flags else name
        oracle = (
            "n/a (no oracle)"
            if pd.isna(judge["agreement_oracle"])
            else pct(judge["agreement_oracle"])
        )
        n_pairs = "—" if pd.isna(judge["n_pairs"]) else str(int(judge["n_pairs"]))
        fmt = judge.get("input_format")
        fmt = "—" if fmt is None or pd.isna(fmt) else str(fmt)
        rows.append([label, pct(judge["agreement_heldout"]), oracle, n_pairs, fmt])
    header = ["Judge", "Agrees with held-out pairs %", "Agrees with oracle %", "Pairs"]
    return join(
        [
            table([*header, "Reads prompt + response as"], rows),
            guide(
                "share of held-out preference pairs where the judge scores the chosen response "
                "above the rejected one (50% = chance), and, on synthetic data, where it agrees "
                "with the programmatic oracle on pairs of generated answers to the same prompt. "
                "Win rates are only as good as their judge: a judge below 70% agreement with "
                "ground truth is marked weak."
            ),
        ]
    )
