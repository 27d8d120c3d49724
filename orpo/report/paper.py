"""The paper's published numbers (Hong, Lee, Thorne 2024, arXiv 2403.07691) and when ours compare.

Win rates are percentages, as printed in the paper: "ORPO vs X" judged by a Bradley-Terry reward
model (OPT-1.3B), mean of 3 rounds at temperature 1.0. Our tables store win rates as fractions;
the report multiplies by 100 before putting them side by side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PAPER_CITATION = "Hong, Lee & Thorne (2024), ORPO, arXiv 2403.07691"

PAPER_MODEL_SIZES = ("125M", "350M", "1.3B")

# Table 2 (Anthropic HH-RLHF) and Table 3 (binarized UltraFeedback):
# data source -> OPT size -> comparison ("sft" = ORPO vs SFT, "dpo" = ORPO vs SFT+DPO) -> %.
PAPER_WIN_RATES: dict[str, dict[str, dict[str, float]]] = {
    "hh-rlhf": {
        "125M": {"sft": 84.0, "dpo": 41.7},
        "350M": {"sft": 82.7, "dpo": 49.4},
        "1.3B": {"sft": 78.0, "dpo": 70.9},
    },
    "ultrafeedback": {
        "125M": {"sft": 73.2, "dpo": 48.8},
        "350M": {"sft": 80.5, "dpo": 50.5},
        "1.3B": {"sft": 69.4, "dpo": 57.8},
    },
}
PAPER_TABLE_NAMES = {"hh-rlhf": "Table 2 (HH-RLHF)", "ultrafeedback": "Table 3 (UltraFeedback)"}


@dataclass(frozen=True)
class PaperDiversity:
    model: str
    method: str  # "dpo" (SFT+DPO) or "orpo"
    pid: float
    aid: float


# Table 4: lexical diversity of Phi-2 (2.7B) and Llama-2 (7B) on UltraFeedback; lower = more
# diverse. The paper has no OPT rows here, so these never correspond to our model sizes.
PAPER_DIVERSITY = (
    PaperDiversity("Phi-2 (2.7B)", "dpo", pid=0.8012, aid=0.6019),
    PaperDiversity("Phi-2 (2.7B)", "orpo", pid=0.8909, aid=0.5173),
    PaperDiversity("Llama-2 (7B)", "dpo", pid=0.8889, aid=0.5658),
    PaperDiversity("Llama-2 (7B)", "orpo", pid=0.9008, aid=0.5091),
)

# Judges named "reward-model:<cell>" are the Bradley-Terry reward models trained as `rm` cells,
# the paper's kind of judge; "oracle" (synthetic ground truth) is not.
REWARD_MODEL_JUDGE_PREFIX = "reward-model"

# The pretrained OPT only: a name that goes on ("opt-125m-shape", a random model built from the
# config; "opt-350m-mine", a user's fine-tune) is another model of the same size.
_OPT_SIZE_PATTERN = re.compile(r"opt[-_]?(125m|350m|1\.3b)(?![0-9a-z_-])", re.IGNORECASE)


def paper_model_size(model: str) -> str | None:
    """The paper's OPT size a model name refers to ("facebook/opt-350m" -> "350M"), else None."""
    match = _OPT_SIZE_PATTERN.search(model)
    return match.group(1).upper() if match else None


@dataclass(frozen=True)
class Correspondence:
    """Whether one of our (data source, model, judge) set-ups matches a row of the paper."""

    corresponds: bool
    differences: tuple[str, ...]  # why not, in words; empty when it corresponds
    data_source: str | None = None  # set when it corresponds
    paper_size: str | None = None  # e.g. "350M", set when it corresponds

    @property
    def table(self) -> str | None:
        """The paper's table this set-up matches, e.g. "Table 2 (HH-RLHF)"."""
        return PAPER_TABLE_NAMES[self.data_source] if self.corresponds else None

    def paper_win_rate(self, versus: str) -> float | None:
        """The paper's ORPO-vs-`versus` win rate (%) for this set-up, None if not comparable."""
        if not self.corresponds:
            return None
        return PAPER_WIN_RATES[self.data_source][self.paper_size].get(versus)


def correspondence(data_source: str, model: str, judge: str) -> Correspondence:
    """The paper's numbers compare to ours only for its data, its OPT sizes and a reward judge."""
    differences = []
    if data_source not in PAPER_WIN_RATES:
        differences.append(
            f"data source is {data_source!r}, the paper used HH-RLHF and UltraFeedback"
        )
    size = paper_model_size(model)
    if size is None:
        differences.append(f"model {model!r} is not one of the paper's OPT-125M/350M/1.3B")
    if not judge.startswith(REWARD_MODEL_JUDGE_PREFIX):
        differences.append(f"judge is {judge!r}, the paper judged with a reward model")
    if differences:
        return Correspondence(False, tuple(differences))
    return Correspondence(True, (), data_source=data_source, paper_size=size)
