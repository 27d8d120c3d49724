"""The one schema every preference data set is converted to.

A `PreferenceExample` is a prompt (a list of chat messages ending with a user turn), a chosen
and a rejected response (plain strings, the assistant's reply), and free-form metadata (the
synthetic suite stores what its oracle needs there). JSONL is the on-disk form.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROLES = ("system", "user", "assistant")


@dataclass
class PreferenceExample:
    id: str
    prompt: list[dict[str, str]]  # [{"role": "user", "content": "..."}, ...], last role is "user"
    chosen: str
    rejected: str
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.prompt:
            raise ValueError(f"example {self.id!r}: empty prompt")
        for message in self.prompt:
            if set(message) != {"role", "content"} or message["role"] not in ROLES:
                raise ValueError(f"example {self.id!r}: bad message {message!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict) -> PreferenceExample:
        return cls(
            id=str(row["id"]),
            prompt=[dict(m) for m in row["prompt"]],
            chosen=row["chosen"],
            rejected=row["rejected"],
            metadata=dict(row.get("metadata") or {}),
        )


def write_rows(rows: Iterable[dict], path: str | Path) -> Path:
    """JSONL, one object per line, written atomically (tmp file then rename) so a crash never
    leaves half a file. The project's one JSONL writer."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_rows(path: str | Path) -> list[dict]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(examples: list[PreferenceExample], path: str | Path) -> Path:
    return write_rows((ex.to_dict() for ex in examples), path)


def read_jsonl(path: str | Path) -> list[PreferenceExample]:
    return [PreferenceExample.from_dict(row) for row in read_rows(path)]
