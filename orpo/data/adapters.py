"""Adapters from the paper's two public preference data sets to `PreferenceExample`.

- Anthropic HH-RLHF (`Anthropic/hh-rlhf`): each row holds two whole transcripts, `chosen` and
  `rejected`, written as "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns. They share the
  conversation and differ in the last assistant reply; a row whose transcripts diverge earlier
  would leave later turns inside the reply, and is dropped ("turn_in_response").
- Binarized UltraFeedback (`HuggingFaceH4/ultrafeedback_binarized`, splits `train_prefs` /
  `test_prefs`): `prompt` plus `chosen` / `rejected` lists of chat messages whose last message is
  the assistant reply. A list ending otherwise ("last_not_assistant"), or chosen and rejected
  lists that answer different conversations ("prompt_mismatch"), is dropped.

`load_preference_dataset` reads either one from a local json/jsonl/parquet file or a hub id
through `datasets`. Rows are converted as they are; dropping empty or identical pairs is the job
of `orpo.data.clean`, so that what was dropped can be counted. Rows that give no usable pair at
all raise `UnusableRow` in the row adapters; the loader drops them and counts them, under their
reason (`orpo.data.clean.ROW_DROP_REASONS`), in the `CleaningReport` it is handed.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from orpo.data.clean import ROW_DROP_REASONS, CleaningReport
from orpo.data.schema import ROLES, PreferenceExample

HUMAN_MARKER = "\n\nHuman:"
ASSISTANT_MARKER = "\n\nAssistant:"
_TURN_MARKER = re.compile(r"\n\n(Human|Assistant):")
_SPEAKER_ROLES = {"Human": "user", "Assistant": "assistant"}

# `datasets` builder for each local file suffix we accept.
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# A hub data set id: "owner/name" (letters, digits, '-', '_', '.').
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

DatasetKind = Literal["hh-rlhf", "ultrafeedback"]

SAMPLE_SEED = 0
"""Seed of every sample drawn from a real data set: the `limit` training rows, the `test_size`
test pairs and the eval pairs carved from train (`orpo.data.prepare`). Fixed, not configured:
the same data config must always give the same rows, and `data.synthetic.seed` belongs to the
synthetic suite. 0 keeps the eval carve the project always had."""


class UnusableRow(ValueError):
    """A well-formed row that gives no clean pair; the loader drops it and counts it under
    `reason` (one of `orpo.data.clean.ROW_DROP_REASONS`) instead of failing the whole file."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in ROW_DROP_REASONS:
            raise ValueError(
                f"unknown row drop reason {reason!r}; expected one of {ROW_DROP_REASONS}"
            )
        super().__init__(message)
        self.reason = reason


# --- Anthropic HH-RLHF -------------------------------------------------------------------------


def hh_rlhf_to_example(row: dict, index: int) -> PreferenceExample:
    """Convert one HH-RLHF row (`chosen`, `rejected` transcripts) to a `PreferenceExample`.

    The prompt is the longest common prefix of the two transcripts, backed off to the last
    "\\n\\nAssistant:" marker inside it (the prefix may run into the replies when both start with
    the same words). Its turns become chat messages (Human -> user, Assistant -> assistant);
    chosen / rejected are the stripped text after that marker. Empty or identical replies are
    kept here and dropped, with a count, by `orpo.data.clean.clean_pairs`.

    Example: chosen "\\n\\nHuman: Hi\\n\\nAssistant: Hello!", rejected "\\n\\nHuman: Hi\\n\\nAssistant:
    Go away." -> prompt [{"role": "user", "content": "Hi"}], chosen "Hello!", rejected "Go away.".

    A row whose transcripts diverge before the last turn (a different earlier reply, or extra
    turns after the reply) would leave "\\n\\nHuman:" turns inside a reply, and a model trained
    on it learns to write the user's next turn: it raises `UnusableRow("turn_in_response")`.

    Raises ValueError naming `index` when the row is malformed (missing fields, no shared
    assistant turn, no human turn in the prompt).
    """
    chosen = _normalise_transcript(_text_field(row, "chosen", index, "hh-rlhf"))
    rejected = _normalise_transcript(_text_field(row, "rejected", index, "hh-rlhf"))
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise ValueError(
            f"hh-rlhf row {index}: chosen and rejected share no '\\n\\nAssistant:' turn, "
            "so the prompt cannot be found"
        )
    prompt = _parse_turns(chosen[:cut], index)
    reply_start = cut + len(ASSISTANT_MARKER)
    replies = {"chosen": chosen[reply_start:], "rejected": rejected[reply_start:]}
    for key, reply in replies.items():
        marker = _TURN_MARKER.search(reply)
        if marker:
            raise UnusableRow(
                "turn_in_response",
                f"hh-rlhf row {index}: the {key} reply holds a later {marker.group(1)!r} turn "
                "(chosen and rejected diverge before the last turn)",
            )
    return PreferenceExample(
        id=f"hh-{index}",
        prompt=prompt,
        chosen=replies["chosen"].strip(),
        rejected=replies["rejected"].strip(),
        metadata={"source": "hh-rlhf"},
    )


def _normalise_transcript(text: str) -> str:
    # Some re-uploads strip the leading "\n\n"; restore it so every turn has the same marker.
    if text.startswith(("Human:", "Assistant:")):
        return "\n\n" + text
    return text


def _parse_turns(transcript: str, index: int) -> list[dict[str, str]]:
    """Split "\\n\\nHuman: a\\n\\nAssistant: b..." into chat messages.

    Consecutive turns by the same speaker (a few HH rows have them) are merged, because chat
    templates expect roles to alternate.
    """
    pieces = _TURN_MARKER.split(transcript)  # [before, speaker, text, speaker, text, ...]
    if pieces[0].strip():
        raise ValueError(f"hh-rlhf row {index}: text before the first 'Human:' turn")
    messages: list[dict[str, str]] = []
    for speaker, text in zip(pieces[1::2], pieces[2::2], strict=True):
        role, content = _SPEAKER_ROLES[speaker], text.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content}".strip()
        else:
            messages.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"hh-rlhf row {index}: the prompt has no 'Human:' turn")
    return messages


# --- binarized UltraFeedback -------------------------------------------------------------------


def ultrafeedback_to_example(row: dict, index: int) -> PreferenceExample:
    """Convert one binarized UltraFeedback row to a `PreferenceExample`.

    `chosen` / `rejected` are message lists whose last message is the assistant reply; every
    message before it (several turns in a multi-turn row) is the conversation and becomes the
    prompt. When a list holds only the reply, its conversation is [{"role": "user", "content":
    row["prompt"]}]. (A plain string `chosen` / `rejected`, as some re-uploads have, is taken as
    the reply itself, and the other side's conversation is the prompt.) `prompt_id`,
    `score_chosen` and `score_rejected` go to metadata when present.

    Raises `UnusableRow` when a list's last message is not the assistant's
    ("last_not_assistant": there is no reply to train on) or when chosen and rejected lists hold
    different conversations ("prompt_mismatch": the pair would not compare two answers to one
    prompt), and ValueError naming `index` when the row is malformed (missing fields, an empty
    list, a message without a known role or text content).
    """
    chosen_history, chosen = _split_reply(row, "chosen", index)
    rejected_history, rejected = _split_reply(row, "rejected", index)
    # A list holding only the reply answers the `prompt` field, like a row without lists.
    conversations = [
        history or _prompt_turn(row, index)
        for history in (chosen_history, rejected_history)
        if history is not None
    ]
    if len(conversations) == 2 and conversations[0] != conversations[1]:
        raise UnusableRow(
            "prompt_mismatch",
            f"ultrafeedback row {index}: chosen and rejected continue different conversations "
            f"({len(conversations[0])} and {len(conversations[1])} messages before the reply)",
        )
    prompt = conversations[0] if conversations else _prompt_turn(row, index)
    metadata: dict = {"source": "ultrafeedback"}
    for key in ("prompt_id", "score_chosen", "score_rejected"):
        if row.get(key) is not None:
            metadata[key] = row[key]
    return PreferenceExample(
        id=f"uf-{index}",
        prompt=prompt,
        chosen=chosen.strip(),
        rejected=rejected.strip(),
        metadata=metadata,
    )


def _prompt_turn(row: dict, index: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": _text_field(row, "prompt", index, "ultrafeedback")}]


def _split_reply(row: dict, key: str, index: int) -> tuple[list[dict[str, str]] | None, str]:
    """(conversation before the reply, reply text) from row[key]; the conversation is None for a
    plain-string reply, which carries none to compare."""
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, str):
        return None, value
    if not isinstance(value, list) or not value:
        raise ValueError(f"ultrafeedback row {index}: {key!r} must be a non-empty message list")
    messages = [_message(m, key, index) for m in value]
    if messages[-1]["role"] != "assistant":
        raise UnusableRow(
            "last_not_assistant",
            f"ultrafeedback row {index}: last {key!r} message has role "
            f"{messages[-1]['role']!r}, expected 'assistant'",
        )
    return messages[:-1], messages[-1]["content"]


def _message(message: object, key: str, index: int) -> dict[str, str]:
    # Keep only role/content: parquet and json loaders may add null fields to every struct.
    if not isinstance(message, dict) or message.get("role") not in ROLES:
        raise ValueError(f"ultrafeedback row {index}: bad message in {key!r}: {message!r}")
    content = message.get("content")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise ValueError(f"ultrafeedback row {index}: non-text content in {key!r}: {content!r}")
    return {"role": message["role"], "content": content}


def _text_field(row: dict, key: str, index: int, kind: str) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str):
        raise ValueError(f"{kind} row {index}: field {key!r} missing or not a string")
    return value


# --- loading -----------------------------------------------------------------------------------

ADAPTERS: dict[str, Callable[[dict, int], PreferenceExample]] = {
    "hh-rlhf": hh_rlhf_to_example,
    "ultrafeedback": ultrafeedback_to_example,
}


def sample_indices(n: int, k: int | None, seed: int = SAMPLE_SEED) -> list[int]:
    """`k` of the indices 0..n-1 drawn with `random.Random(seed)`, in increasing order; all of
    them when `k` is None or at least `n`.

    Drawn over the indices, never a head of the rows: data dumps are often sorted (HH-RLHF's
    files run helpful-base, then harmless-base, ...), so the first rows are one subset. The
    same (n, k, seed) always gives the same indices.
    """
    if k is not None and k < 0:
        raise ValueError(f"sample size must be >= 0, got {k}")
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def load_preference_dataset(
    kind: DatasetKind,
    source: str,
    split: str = "train",
    limit: int | None = None,
    *,
    seed: int = SAMPLE_SEED,
    report: CleaningReport | None = None,
) -> list[PreferenceExample]:
    """Read a preference data set and convert its rows with the adapter for `kind`.

    `source` is a local .json/.jsonl/.parquet file (read with `datasets`' json/parquet builder,
    whose only split is "train", so `split` is ignored), a local data folder, or a hub id such
    as "Anthropic/hh-rlhf" (split "train"/"test") or "HuggingFaceH4/ultrafeedback_binarized"
    (split "train_prefs"/"test_prefs"). `limit` keeps a random sample of `limit` rows
    (`sample_indices` with `seed`), returned in file order; ids keep the row's index in the file.

    Rows the adapter rejects with `UnusableRow` are left out and, when `report` is given, counted
    in `report.dropped` under their reason (pass the same report to `clean_pairs`).

    Raises ValueError for an unknown `kind`, a negative `limit`, an unsupported file suffix or a
    malformed row, and FileNotFoundError for a missing path that is not a plausible hub id either.
    """
    if kind not in ADAPTERS:
        raise ValueError(f"unknown data set kind {kind!r}; expected one of {sorted(ADAPTERS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    adapter = ADAPTERS[kind]
    rows = _load_rows(source, split)
    if limit is None:
        indexed: Iterable[tuple[int, dict]] = enumerate(rows)
    else:
        indexed = ((i, rows[i]) for i in sample_indices(len(rows), limit, seed))
    examples = []
    for index, row in indexed:
        try:
            examples.append(adapter(row, index))
        except UnusableRow as unusable:
            if report is not None:
                report.dropped[unusable.reason] += 1
    return examples


def _load_rows(source: str, split: str) -> Sequence[dict]:
    import datasets  # heavy import: only when actually loading

    path = Path(source).expanduser()
    if path.is_file():
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"unsupported data file {source!r}: suffix {path.suffix!r}, "
                f"expected one of {sorted(LOCAL_FORMATS)}"
            )
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if path.is_dir():
        return datasets.load_dataset(str(path), split=split)
    if not _looks_like_hub_id(source):
        raise FileNotFoundError(
            f"data source {source!r} is neither an existing file nor a hub id ('owner/name')"
        )
    return datasets.load_dataset(source, split=split)


def _looks_like_hub_id(source: str) -> bool:
    # "data/train.jsonl" also matches owner/name: a data-file suffix means a (missing) path.
    return bool(_HUB_ID.match(source)) and Path(source).suffix.lower() not in LOCAL_FORMATS
