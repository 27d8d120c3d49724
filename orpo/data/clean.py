"""The paper's cleaning: drop pairs with chosen == rejected or an empty response, and say why.

Each dropped pair is counted once, under the first reason that applies, in the order of
`DROP_REASONS`: a pair with an empty prompt is "empty_prompt" whatever its replies, and a pair
whose replies are both empty is "empty_chosen" (not "identical"). So
`kept + sum(dropped.values())` is always the number of input pairs.

The same report also counts the rows an adapter (`orpo.data.adapters`) could not turn into a
clean pair at all (`ROW_DROP_REASONS`), when the loader is handed it, so that the manifest's
"cleaning" section accounts for every row of the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orpo.data.schema import PreferenceExample

ROW_DROP_REASONS = ("turn_in_response", "last_not_assistant", "prompt_mismatch")
"""Rows the adapters drop before a pair exists: an HH-RLHF reply that still holds a later
"\\n\\nHuman:"/"\\n\\nAssistant:" turn (the transcripts diverge before the last turn), an
UltraFeedback message list whose last message is not the assistant's, and UltraFeedback chosen /
rejected lists that answer different conversations."""
PAIR_DROP_REASONS = ("empty_prompt", "empty_chosen", "empty_rejected", "identical")
"""Pairs `drop_reason` drops."""
DROP_REASONS = ROW_DROP_REASONS + PAIR_DROP_REASONS


class EmptyDatasetError(ValueError):
    """Cleaning left no pair to train on."""


@dataclass
class CleaningReport:
    """What `clean_pairs` kept and dropped."""

    kept: int = 0
    """Number of pairs kept."""
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    """Dropped pairs per reason; every reason in `DROP_REASONS` is present, zero or not."""

    @property
    def total(self) -> int:
        """Number of pairs seen."""
        return self.kept + sum(self.dropped.values())

    def summary(self) -> str:
        """One line, e.g. "kept 3 of 5 pairs; dropped 2 (empty_prompt=0, ..., identical=1)"."""
        n_dropped = self.total - self.kept
        reasons = ", ".join(f"{reason}={count}" for reason, count in self.dropped.items())
        return f"kept {self.kept} of {self.total} pairs; dropped {n_dropped} ({reasons})"


def drop_reason(example: PreferenceExample) -> str | None:
    """Why `example` should be dropped (one of `PAIR_DROP_REASONS`), or None to keep it."""
    if not any((message.get("content") or "").strip() for message in example.prompt):
        return "empty_prompt"
    chosen = (example.chosen or "").strip()
    rejected = (example.rejected or "").strip()
    if not chosen:
        return "empty_chosen"
    if not rejected:
        return "empty_rejected"
    if chosen == rejected:
        return "identical"
    return None


def clean_pairs(
    examples: Iterable[PreferenceExample], *, report: CleaningReport | None = None
) -> tuple[list[PreferenceExample], CleaningReport]:
    """Keep the pairs `drop_reason` accepts, unchanged and in order, and count the rest.

    `report`, when given, is the one the loader already counted dropped rows in
    (`load_preference_dataset(..., report=...)`); it is updated and returned, so one report covers
    the whole file. Without it a fresh report is used.

    Raises EmptyDatasetError (a ValueError) with the counts when nothing is left.
    """
    report = CleaningReport() if report is None else report
    kept: list[PreferenceExample] = []
    for example in examples:
        reason = drop_reason(example)
        if reason is None:
            kept.append(example)
        else:
            report.dropped[reason] += 1
    report.kept += len(kept)
    if not kept:
        raise EmptyDatasetError(f"no preference pairs left after cleaning: {report.summary()}")
    return kept, report
