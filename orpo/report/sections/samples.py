"""Section 10: a few generations per method on the same prompts. All of it is untrusted text."""

from __future__ import annotations

import pandas as pd

from orpo.report.labels import KNOBS, knob_values, ordered_models, policy_variants, rows_of_variant
from orpo.report.markup import Safe, guide, join, note, num, preformatted, table, tag
from orpo.report.sections.common import missing_note
from orpo.report.tables import GREEDY_SAMPLE_INDEX, Results

SECTION_ID = "samples"
TITLE = "10. Sample generations"

PROMPTS_SHOWN = 3
MAX_TEXT_CHARS = 800  # enough to judge a reply; the full text is in the cell's MLflow artifacts


def render(results: Results) -> Safe:
    missing = missing_note(results, "samples")
    if missing:
        return missing
    samples = results.samples
    prompt_ids = _shared_prompt_ids(samples)
    if not prompt_ids:
        return note("No generations to show.")
    parts: list[object] = [
        guide(
            "the same prompts for every method and size; one sample each (the greedy answer when "
            "there is one, else the first sampled), from the lowest seed, with the judge's reward. "
            "Model text is shown verbatim, escaped, and cut at "
            f"{MAX_TEXT_CHARS} characters."
        )
    ]
    for prompt_id in prompt_ids:
        parts.append(_prompt_block(results, samples[samples["prompt_id"] == prompt_id]))
    return join(parts)


def _shared_prompt_ids(samples: pd.DataFrame) -> list:
    """The prompts answered by the most (model, method, lambda, beta) variants, so rows line up."""
    variant_key = samples["model"].astype(str) + "|" + samples["method"].astype(str)
    for knob in KNOBS:
        variant_key = variant_key + "|" + knob_values(samples, knob).astype(str)
    coverage = variant_key.groupby(samples["prompt_id"]).nunique()
    ranked = coverage.reset_index(name="variants").sort_values(
        ["variants", "prompt_id"], ascending=[False, True], key=_sortable
    )
    return list(ranked["prompt_id"].head(PROMPTS_SHOWN))


def _sortable(column: pd.Series) -> pd.Series:
    # prompt ids may be ints or strings; compare as strings so mixed ids still sort.
    return column if column.name == "variants" else column.astype(str)


def _prompt_block(results: Results, of_prompt: pd.DataFrame) -> Safe:
    rows = []
    for model in ordered_models(of_prompt, results.meta.models):
        of_model = of_prompt[of_prompt["model"] == model]
        for variant in policy_variants(of_model):
            sample = _one_sample(rows_of_variant(of_model, *variant))
            label = (
                "greedy"
                if sample["sample_index"] == GREEDY_SAMPLE_INDEX
                else f"sample {int(sample['sample_index'])}"
            )
            rows.append(
                [
                    model,
                    variant.label,
                    label,
                    num(sample["reward"], ".3f"),
                    preformatted(_cut(sample["text"])),
                ]
            )
    first = of_prompt.iloc[0]
    return tag(
        "div",
        join(
            [
                tag("h3", join(["Prompt ", tag("code", first["prompt_id"])])),
                preformatted(_cut(first["prompt"])),
                table(
                    ["Model", "Method", "Sample", "Reward", "Generation"], rows, class_="samples"
                ),
            ]
        ),
        class_="prompt",
    )


def _one_sample(variant: pd.DataFrame) -> pd.Series:
    lowest_seed = variant[variant["seed"] == variant["seed"].min()]
    greedy = lowest_seed[lowest_seed["sample_index"] == GREEDY_SAMPLE_INDEX]
    if not greedy.empty:
        return greedy.iloc[0]
    return lowest_seed.sort_values("sample_index").iloc[0]


def _cut(text) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + " …"
