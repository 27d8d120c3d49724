"""The paper's cleaning: drop pairs with chosen == rejected or an empty response, and say why.

Each dropped pair is counted once, under the first reason that applies, in the order of
`DROP_REASONS`: a pair with an empty prompt is "empty_prompt" whatever its replies, and a pair
whose replies are both empty is "empty_chosen" (not "identical"). So
`kept + sum(dropped.values())` is always the number of input pairs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from orpo.data.schema import PreferenceExample

DROP_REASONS = ("empty_prompt", "empty_chosen", "empty_rejected", "identical")


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
    """Why `example` should be dropped (one of `DROP_REASONS`), or None to keep it."""
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
    examples: Iterable[PreferenceExample],
) -> tuple[list[PreferenceExample], CleaningReport]:
    """Keep the pairs `drop_reason` accepts, unchanged and in order, and count the rest.

    Raises EmptyDatasetError (a ValueError) with the counts when nothing is left.
    """
    report = CleaningReport()
    kept: list[PreferenceExample] = []
    for example in examples:
        reason = drop_reason(example)
        if reason is None:
            kept.append(example)
        else:
            report.dropped[reason] += 1
    report.kept = len(kept)
    if not kept:
        raise EmptyDatasetError(f"no preference pairs left after cleaning: {report.summary()}")
    return kept, report
