"""Adapters from the paper's two public preference data sets to `PreferenceExample`.

- Anthropic HH-RLHF (`Anthropic/hh-rlhf`): each row holds two whole transcripts, `chosen` and
  `rejected`, written as "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns. They share the
  conversation and differ in the last assistant reply.
- Binarized UltraFeedback (`HuggingFaceH4/ultrafeedback_binarized`, splits `train_prefs` /
  `test_prefs`): `prompt` plus `chosen` / `rejected` lists of chat messages whose last message is
  the assistant reply.

`load_preference_dataset` reads either one from a local json/jsonl/parquet file or a hub id
through `datasets`. Rows are converted as they are; dropping empty or identical pairs is the job
of `orpo.data.clean`, so that what was dropped can be counted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

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
    return PreferenceExample(
        id=f"hh-{index}",
        prompt=prompt,
        chosen=chosen[reply_start:].strip(),
        rejected=rejected[reply_start:].strip(),
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

    `chosen` / `rejected` are message lists whose last message is the assistant reply; the
    messages before it are the conversation and become the prompt. When there are none, the
    prompt is [{"role": "user", "content": row["prompt"]}]. (A plain string `chosen` / `rejected`,
    as some re-uploads have, is taken as the reply itself.) `prompt_id`, `score_chosen` and
    `score_rejected` go to metadata when present.

    Raises ValueError naming `index` when the row is malformed (missing fields, a last message
    that is not the assistant's, chosen and rejected answering different conversations).
    """
    chosen_history, chosen = _split_reply(row, "chosen", index)
    rejected_history, rejected = _split_reply(row, "rejected", index)
    if chosen_history and rejected_history and chosen_history != rejected_history:
        raise ValueError(
            f"ultrafeedback row {index}: chosen and rejected continue different conversations"
        )
    prompt = chosen_history or rejected_history
    if not prompt:
        prompt = [{"role": "user", "content": _text_field(row, "prompt", index, "ultrafeedback")}]
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


def _split_reply(row: dict, key: str, index: int) -> tuple[list[dict[str, str]], str]:
    """(conversation before the reply, reply text) from row[key]."""
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, str):
        return [], value
    if not isinstance(value, list) or not value:
        raise ValueError(f"ultrafeedback row {index}: {key!r} must be a non-empty message list")
    messages = [_message(m, key, index) for m in value]
    if messages[-1]["role"] != "assistant":
        raise ValueError(
            f"ultrafeedback row {index}: last {key!r} message has role "
            f"{messages[-1]['role']!r}, expected 'assistant'"
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


def load_preference_dataset(
    kind: DatasetKind, source: str, split: str = "train", limit: int | None = None
) -> list[PreferenceExample]:
    """Read a preference data set and convert every row with the adapter for `kind`.

    `source` is a local .json/.jsonl/.parquet file (read with `datasets`' json/parquet builder,
    whose only split is "train", so `split` is ignored), a local data folder, or a hub id such
    as "Anthropic/hh-rlhf" (split "train"/"test") or "HuggingFaceH4/ultrafeedback_binarized"
    (split "train_prefs"/"test_prefs"). `limit` keeps the first `limit` rows.

    Raises ValueError for an unknown `kind`, a negative `limit` or an unsupported file suffix,
    and FileNotFoundError for a missing path that is not a plausible hub id either.
    """
    if kind not in ADAPTERS:
        raise ValueError(f"unknown data set kind {kind!r}; expected one of {sorted(ADAPTERS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    adapter = ADAPTERS[kind]
    examples = []
    for index, row in enumerate(_load_rows(source, split)):
        if limit is not None and index >= limit:
            break
        examples.append(adapter(row, index))
    return examples


def _load_rows(source: str, split: str) -> Iterable[dict]:
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
