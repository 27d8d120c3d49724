"""The training methods the lab compares, each declared once.

A method's entry says what a reader of a results table needs to know about it and what the
rest of the lab asks of it: its loss (a pure function in `orpo.losses`, called by the training
objective of the same name in `orpo.training.objectives`), whether it needs the reference
model's log-probs (cached once per SFT checkpoint), what it starts from, which rows of a pair it
reads, and its loss hyper-parameters (fields of the method's own YAML section, next to its
optimiser settings, logged to MLflow under the same names as `cell.params.<name>`).

ORPO's `orpo_lambda` and DPO's `dpo_beta` are grid axes (one cell per value, in the cell id);
the other methods' hyper-parameters are fixed per experiment. Changing one retrains the cell:
it is part of the cell's key (`orpo.training.job.cell_key`), and the cell store keeps the
earlier result.

Adding a method: its loss in `orpo/losses.py`, its entry here, its section model in
`orpo/config.py` (the defaults its paper uses), its objective, and its tests.

KTO (Ethayarajh et al. 2024) is not here: its reference point z0 is a statistic of the whole
batch (the policy's KL from the reference on mismatched pairs,
one more forward pass of both models), so a micro-batch's share of the window loss depends on
the other micro-batches, which the window normalisation of `orpo.training.objectives` cannot
express.

This module is imported by the config, so it stays free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str
    loss: str
    """The `orpo.losses` function the objective calls (by name: this module has no torch)."""
    needs_reference: bool
    """Reads the frozen starting checkpoint's summed log-probs of chosen and rejected."""
    starts_from: Literal["base", "sft"]
    """"sft": the method fine-tunes the SFT cell's checkpoint of the same model and seed (its
    paper's pipeline); "base": the pretrained base (or the preset's pretraining cell)."""
    reads: Literal["chosen", "pairs"]
    knobs: tuple[str, ...]
    """Loss hyper-parameters: the knob names of its YAML section (grid axes for ORPO/DPO)."""
    paper: str


METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "sft", "SFT", "token_nll", False, "base", "chosen", (),
            "supervised fine-tuning on the chosen responses",
        ),
        MethodSpec(
            "dpo", "SFT+DPO", "dpo_loss", True, "sft", "pairs", ("dpo_beta",),
            "Rafailov et al. 2023, on the SFT checkpoint (the ORPO paper's baseline)",
        ),
        MethodSpec(
            "orpo", "ORPO", "odds_ratio_loss", False, "base", "pairs", ("orpo_lambda",),
            "Hong, Lee and Thorne 2024: NLL + lambda * odds-ratio term, from the base",
        ),
        MethodSpec(
            "simpo", "SFT+SimPO", "simpo_loss", False, "sft", "pairs", ("beta", "gamma"),
            "Meng, Xia and Chen 2024: length-normalised, reference-free, margin gamma",
        ),
        MethodSpec(
            "cpo", "SFT+CPO", "cpo_loss", False, "sft", "pairs", ("beta",),
            "Xu et al. 2024: reference-free DPO term + NLL on the chosen response",
        ),
        MethodSpec(
            "ipo", "SFT+IPO", "ipo_loss", True, "sft", "pairs", ("tau",),
            "Azar et al. 2023: squared loss on the reference-relative log-ratio",
        ),
    )
}  # fmt: skip
METHOD_NAMES = tuple(METHODS)
PAPER_METHODS = ("sft", "dpo", "orpo")  # what the ORPO paper compares
OTHER_METHODS = tuple(name for name in METHOD_NAMES if name not in PAPER_METHODS)
REFERENCE_METHODS = tuple(name for name, spec in METHODS.items() if spec.needs_reference)


def needs_reference(stage: str) -> bool:
    return stage in REFERENCE_METHODS


def starts_from_sft(stage: str) -> bool:
    return stage in METHODS and METHODS[stage].starts_from == "sft"
