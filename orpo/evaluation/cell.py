"""The per-cell evaluation steps and the files they leave in the cell's folder.

A trained policy cell (sft, dpo, orpo) `runs/<exp>/cells/<cell_id>/` gains:

    samples.jsonl              {prompt_id, sample_index, text, n_tokens, finished} per line:
                               K sampled answers (0..K-1) and the greedy one (-1) per test prompt
    logratios.jsonl            {pair_id, logp_chosen, logp_rejected, log_prob_ratio,
                               log_odds_ratio} per held-out (test) pair
    evaluation.json            what produced them (key, settings, seconds)
    rewards/<judge>.jsonl      {prompt_id, sample_index, reward} per sample, one file per judge
                               (<judge> = `judge_slug(judge name)`), so judges never share a file
    rewards/<judge>.json       the judge's name, key and seconds

A base row (`base-<model>-s<seed>`, the untrained starting model) and a negative control
(`sft-<model>-s<seed>-resampled`: the SFT cell's model sampled again with another sampling seed;
no log-ratios, they would equal the original's) get the same files in their own folders.

The experiment gains `runs/<exp>/judges/<judge>.json`: the judge's agreement with held-out
pairs (`judge_quality`). Every step is keyed by its inputs (model and data content hashes,
settings) and skipped when its files already hold the result for the same key.

Held-out pairs are the test split's pairs: never trained on, never used to pick a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from orpo import paths
from orpo.config import (
    BASE,
    POLICY_STAGES,
    RESAMPLE_SEED_OFFSET,
    Cell,
    Experiment,
    base_cells,
    control_cells,
    evaluated_cells,
    expand_cells,
    rm_cell_id,
)
from orpo.data.schema import read_jsonl, read_rows, write_rows
from orpo.evaluation.generate import generate_samples
from orpo.evaluation.judges import (
    ORACLE,
    REWARD_MODEL,
    agreement,
    judge_slug,
    load_judge,
    model_label,
)
from orpo.evaluation.logratios import model_log_ratio_rows
from orpo.models import build_model, is_preset, load_tokenizer
from orpo.pipeline import starting_point
from orpo.training.engine import eval_placement
from orpo.training.job import hash_dir, hash_files

SAMPLES_FILE = "samples.jsonl"
LOGRATIOS_FILE = "logratios.jsonl"
EVALUATION_FILE = "evaluation.json"
REWARDS_DIR = "rewards"
JUDGES_DIR = "judges"


def find_cell(exp: Experiment, cell: str) -> Cell:
    cells = {c.id: c for c in [*expand_cells(exp), *base_cells(exp), *control_cells(exp)]}
    if cell not in cells:
        raise KeyError(f"no cell {cell!r} in experiment {exp.name}")
    return cells[cell]


def heldout_path(exp: Experiment) -> Path:
    return paths.data_dir(exp.name) / "test.jsonl"


def rewards_path(exp: Experiment, cell: str, name: str) -> Path:
    return paths.cell_dir(exp.name, cell) / REWARDS_DIR / f"{judge_slug(name)}.jsonl"


def judge_quality_path(exp: Experiment, name: str) -> Path:
    return paths.runs_dir(exp.name) / JUDGES_DIR / f"{judge_slug(name)}.json"


def default_rm_model_dir(exp: Experiment) -> Path:
    return paths.cell_dir(exp.name, rm_cell_id(exp)) / "model"


def judge_name(
    exp: Experiment, judge_spec: str | None = None, rm_model_dir: str | Path | None = None
) -> str:
    """The name a judge gets in the results, without loading it (the headline judge by
    default): 'oracle', 'reward-model:<rm cell id>' or 'reward-model:<hub id or path>'."""
    spec = judge_spec or exp.eval.judge
    if spec == ORACLE:
        return ORACLE
    if spec == REWARD_MODEL:
        return f"{REWARD_MODEL}:{model_label(rm_model_dir or default_rm_model_dir(exp))}"
    return f"{REWARD_MODEL}:{spec}"


def _key(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)
    return path


def evaluate_cell(exp: Experiment, cell: str) -> Path:
    """Generate the samples of a trained policy cell (or of a base row: the untrained model it
    starts from) and its held-out log-ratio rows; returns the path of samples.jsonl. Skipped
    when an earlier run had the same key."""
    spec = find_cell(exp, cell)
    if spec not in evaluated_cells(exp):
        raise ValueError(
            f"cell {cell}: only policy cells {POLICY_STAGES} and base rows are evaluated, "
            f"not {spec.stage!r}"
        )
    out = paths.cell_dir(exp.name, cell)
    model_dir = _model_dir(exp, spec)
    sampling_seed = spec.seed + (RESAMPLE_SEED_OFFSET if spec.resample_of else 0)
    # a random preset's base row has no folder: it is rebuilt from its name and seed, with the
    # tokenizer trained on the experiment's data, exactly as its cells were
    random_base = spec.stage == BASE and is_preset(str(model_dir))
    tokenizer_dir = paths.data_dir(exp.name) / "tokenizer" if random_base else model_dir
    if not random_base and not model_dir.is_dir():
        raise FileNotFoundError(f"cell {cell}: no model at {model_dir} (train it first)")
    device, dtype = eval_placement(exp.resources)
    settings = {
        "samples_per_prompt": exp.eval.samples_per_prompt,
        "temperature": exp.eval.temperature,
        "max_new_tokens": exp.eval.max_new_tokens,
        "batch_size": exp.eval.batch_size,
        "seed": sampling_seed,
        "max_length": exp.data.max_length,
        "max_prompt_length": exp.data.max_prompt_length,
        "device": device.type,
        "dtype": str(dtype).removeprefix("torch."),
    }
    model_version = (
        {"preset": str(model_dir), "tokenizer": hash_dir(tokenizer_dir)}
        if random_base
        else hash_dir(model_dir)
    )
    key = _key({**settings, "model": model_version, "test": hash_files([heldout_path(exp)])})
    samples, logratios = out / SAMPLES_FILE, out / LOGRATIOS_FILE
    done = _read_json(out / EVALUATION_FILE)
    if done and done.get("key") == key and samples.is_file() and logratios.is_file():
        return samples

    tokenizer = load_tokenizer(str(tokenizer_dir))
    # build_model, not load_model: a base row's folder may lack the pad token's embedding row,
    # which build_model adds exactly as it did for the cells trained from that folder
    model = build_model(str(model_dir), tokenizer, seed=spec.seed, dtype=dtype).to(device)
    examples = read_jsonl(heldout_path(exp))
    started = time.perf_counter()
    rows = generate_samples(
        model, tokenizer, examples, k=exp.eval.samples_per_prompt,
        temperature=exp.eval.temperature, max_new_tokens=exp.eval.max_new_tokens,
        batch_size=exp.eval.batch_size, seed=sampling_seed,
        max_prompt_length=exp.data.max_prompt_length,
    )  # fmt: skip
    generation_seconds = time.perf_counter() - started
    started = time.perf_counter()
    # a resampled control has its original's weights, hence its log-ratios: not computed twice
    ratios = (
        []
        if spec.resample_of
        else model_log_ratio_rows(
            model, tokenizer, examples, exp.data.max_length, exp.data.max_prompt_length
        )
    )
    logratio_seconds = time.perf_counter() - started
    write_rows(rows, samples)
    write_rows(ratios, logratios)
    _write_json(out / EVALUATION_FILE, {
        "key": key, "cell_id": cell, **settings, "n_prompts": len(examples),
        "n_samples": len(rows), "n_pairs": len(ratios),
        "generation_seconds": generation_seconds, "logratio_seconds": logratio_seconds,
    })  # fmt: skip
    return samples


def _model_dir(exp: Experiment, cell: Cell) -> Path:
    """The weights a cell generates from: a base row's starting point, a control's original
    cell's model, else the cell's own trained model."""
    if cell.stage == BASE:
        return Path(starting_point(exp, cell))
    return paths.cell_dir(exp.name, cell.resample_of or cell.id) / "model"


def _judge_version(judge_spec: str, rm_model_dir: str | Path | None) -> str:
    if judge_spec == ORACLE:
        return ORACLE
    folder = rm_model_dir if judge_spec == REWARD_MODEL else judge_spec
    return hash_dir(folder) if Path(str(folder)).is_dir() else str(folder)


def _resolve_rm_dir(exp: Experiment, judge_spec: str, rm_model_dir) -> Path | None:
    if judge_spec == REWARD_MODEL and rm_model_dir is None:
        return default_rm_model_dir(exp)
    return Path(rm_model_dir) if rm_model_dir is not None else None


def _load(exp: Experiment, judge_spec: str, rm_model_dir: Path | None):
    device, dtype = eval_placement(exp.resources)
    return load_judge(
        judge_spec,
        rm_model_dir,
        device=device,
        dtype=dtype,
        batch_size=max(exp.eval.batch_size, 32),
        max_length=exp.data.max_length,
        max_prompt_length=exp.data.max_prompt_length,
    )


def judge_cell(
    exp: Experiment, cell: str, judge_spec: str, rm_model_dir: str | Path | None = None
) -> Path:
    """Score every sample of an evaluated policy cell with one judge; returns the rewards file.
    `rm_model_dir` defaults to the experiment's rm cell for judge 'reward-model'."""
    rm_dir = _resolve_rm_dir(exp, judge_spec, rm_model_dir)
    out = rewards_path(exp, cell, judge_name(exp, judge_spec, rm_dir))
    samples_path = paths.cell_dir(exp.name, cell) / SAMPLES_FILE
    if not samples_path.is_file():
        raise FileNotFoundError(f"cell {cell}: no {SAMPLES_FILE} (run evaluate_cell first)")
    key = _key(
        {
            "samples": hash_files([samples_path]),
            "judge": judge_spec,
            "judge_version": _judge_version(judge_spec, rm_dir),
            "max_length": exp.data.max_length,
            "max_prompt_length": exp.data.max_prompt_length,
        }
    )
    done = _read_json(out.with_suffix(".json"))
    if done and done.get("key") == key and out.is_file():
        return out
    judge = _load(exp, judge_spec, rm_dir)
    by_id = {ex.id: ex for ex in read_jsonl(heldout_path(exp))}
    samples = read_rows(samples_path)
    started = time.perf_counter()
    rewards = judge.score([by_id[s["prompt_id"]] for s in samples], [s["text"] for s in samples])
    rows = [
        {"prompt_id": s["prompt_id"], "sample_index": s["sample_index"], "reward": float(r)}
        for s, r in zip(samples, rewards, strict=True)
    ]
    write_rows(rows, out)
    _write_json(
        out.with_suffix(".json"),
        {"judge": judge.name, "key": key, "seconds": time.perf_counter() - started},
    )
    return out


def judge_quality(exp: Experiment, judge_spec: str, rm_model_dir: str | Path | None = None) -> dict:
    """The judge's agreement with the held-out (test) pairs, written to
    `runs/<exp>/judges/<judge>.json` and returned: {judge, agreement_heldout,
    agreement_oracle (None here: `collect_results` fills it from the generations), n_pairs}."""
    judge = _load(exp, judge_spec, _resolve_rm_dir(exp, judge_spec, rm_model_dir))
    pairs = read_jsonl(heldout_path(exp))
    row = {
        "judge": judge.name,
        "agreement_heldout": agreement(judge, pairs),
        "agreement_oracle": None,
        "n_pairs": len(pairs),
        "split": "test",
        "input_format": getattr(judge, "input_format", None),
    }
    _write_json(judge_quality_path(exp, judge.name), row)
    return row
