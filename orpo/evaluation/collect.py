"""From cell folders to the results folder the report reads (the contract in
`orpo/report/tables.py`): meta.json plus cells, win_rates, diversity, judges, curves, logratios,
timings and samples as parquet.

Inputs, per cell `runs/<exp>/cells/<cell_id>/`: `result.json` (training finished),
`failure.json` ({"cell_id", "error"}, written by the orchestrator when a cell failed),
`metrics.jsonl` (training curves) and the evaluation files of `orpo.evaluation.cell`
(samples.jsonl, logratios.jsonl, rewards/<judge>.jsonl); per experiment, `judges/<judge>.json`.

Win rates: `orpo.evaluation.winrates`, for every judge with rewards. On synthetic data the
oracle always judges too (cheap, and the ground truth), computed here from the samples. A
comparison whose cells failed or were not evaluated is skipped and named in meta.json's notes,
never an error. The judges table takes `judge_quality`'s rows; on synthetic data it adds the
oracle's own row and, for every judge, `agreement_oracle` over pairs of the policies' samples to
the same prompt (do the judge and the oracle order them alike?).

Extra columns beyond the contract (allowed by it): cells.error_kind, truncation; win_rates.dpo_beta_a,
dpo_beta_b, cell_a, cell_b, seed_b, n_seeds, comparison, se, df, p_value, p_holm, family_size,
detectable (see `orpo.evaluation.winrates`); diversity/curves/logratios/samples.dpo_beta;
logratios.pair_id, logp_chosen, logp_rejected; samples.n_tokens, oracle_reward; judges.split,
n_oracle_pairs. The report keys comparisons by both knobs: every beta and lambda its own row.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from orpo import paths
from orpo.config import (
    BASE,
    Cell,
    Experiment,
    control_cells,
    evaluated_cells,
    expand_cells,
    load_experiment,
)
from orpo.data.counts import manifest_line
from orpo.data.schema import PreferenceExample, read_jsonl, read_rows
from orpo.diversity import lexical_diversity, load_embedder
from orpo.evaluation.cell import (
    EVALUATION_FILE,
    JUDGES_DIR,
    LOGRATIOS_FILE,
    REWARDS_DIR,
    SAMPLES_FILE,
    evaluate_cell,
    heldout_path,
    judge_cell,
    judge_name,
    judge_quality,
)
from orpo.evaluation.judges import ORACLE, OracleJudge, agreement, ordering_agreement
from orpo.evaluation.mlflow_log import cell_metrics
from orpo.evaluation.winrates import win_rate_rows
from orpo.models import PAPER_MODELS, PRESETS
from orpo.report.tables import CELL_TOTALS, META_FILE, TABLE_COLUMNS, table_file
from orpo.timing import CELL_PHASES

__all__ = [
    "cell_metrics",
    "collect_results",
    "evaluate_cell",
    "judge_cell",
    "judge_quality",
    "rerender_report",
]

IDENTITY = ["cell_id", "method", "model", "orpo_lambda", "dpo_beta", "seed"]


# --- cells ------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _identity(cell: Cell) -> dict:
    return {
        "cell_id": cell.id,
        "method": cell.stage,
        "model": cell.model,
        "orpo_lambda": cell.orpo_lambda,
        "dpo_beta": cell.dpo_beta,
        "seed": cell.seed,
    }


def _last_step(metrics_path: Path) -> int | None:
    rows = read_rows(metrics_path) if metrics_path.is_file() else []
    return rows[-1]["step"] if rows else None


def _newer(folder: Path, a: str, b: str) -> bool:
    return (folder / a).stat().st_mtime >= (folder / b).stat().st_mtime


def cell_row(exp: Experiment, cell: Cell, run_urls: dict[str, str]) -> dict:
    """One row of cells.parquet: status from result.json, else failure.json, else failed."""
    folder = paths.cell_dir(exp.name, cell.id)
    result, failure = _read_json(folder / "result.json"), _read_json(folder / "failure.json")
    row = {
        **_identity(cell),
        "status": "failed",
        "error": None,
        "error_kind": None,
        "mlflow_run_url": run_urls.get(cell.id),
    }
    for field in CELL_TOTALS:
        row[field] = (result or {}).get(field)
    # the truncation policy's counts over the training pairs (orpo.data.tokenize)
    train = ((result or {}).get("truncation") or {}).get("train") or {}
    row["truncation"] = (
        f"{train['prompt_truncated']} / {train['response_truncated']} / {train['dropped']} "
        f"of {train['total']}"
        if train
        else None
    )
    if result is not None and failure is not None and _newer(folder, "failure.json", "result.json"):
        result = None  # an old result; this configuration's run of the cell failed or never ran
    if result is not None:  # written last by the worker: its presence means the cell finished
        row["status"] = result.get("status") if result.get("status") == "cached" else "completed"
        row["mlflow_run_url"] = row["mlflow_run_url"] or result.get("mlflow_run_url")
    elif failure is not None:
        row.update(
            error=str(failure.get("error") or "(no message)"),
            error_kind="failed",
            steps=_last_step(folder / "metrics.jsonl"),
        )
        row["mlflow_run_url"] = row["mlflow_run_url"] or failure.get("mlflow_run_url")
    else:
        row.update(
            error="not run or did not finish: no result.json and no failure.json",
            error_kind="missing",
            steps=_last_step(folder / "metrics.jsonl"),
        )
    return row


# --- per-cell evaluation files ------------------------------------------------------------------


def _load_cell_samples(exp: Experiment, cells: list[Cell]) -> pd.DataFrame:
    frames = []
    for cell in cells:
        path = paths.cell_dir(exp.name, cell.id) / SAMPLES_FILE
        if path.is_file():
            frame = pd.DataFrame(read_rows(path))
            frames.append(frame.assign(**_identity(cell)))
    if not frames:
        return pd.DataFrame(columns=[*IDENTITY, "prompt_id", "sample_index", "text", "n_tokens"])
    return pd.concat(frames, ignore_index=True)


def _load_rewards(exp: Experiment, cells: list[Cell]) -> pd.DataFrame:
    """(cell_id, judge, prompt_id, sample_index, reward) from every rewards/<judge>.jsonl."""
    frames = []
    for cell in cells:
        folder = paths.cell_dir(exp.name, cell.id) / REWARDS_DIR
        for meta_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            rows_path = meta_path.with_suffix(".jsonl")
            if rows_path.is_file():
                judge = json.loads(meta_path.read_text())["judge"]
                frame = pd.DataFrame(read_rows(rows_path))
                frames.append(frame.assign(cell_id=cell.id, judge=judge))
    if not frames:
        return pd.DataFrame(columns=["cell_id", "judge", "prompt_id", "sample_index", "reward"])
    return pd.concat(frames, ignore_index=True)


def timing_rows(exp: Experiment, trained: list[Cell], evaluated: list[Cell]) -> list[dict]:
    """(cell_id, phase, seconds) for orpo.timing's phases: each finished training cell's from
    its result.json (a phase it predates is left out), each evaluated row's generation and
    log-ratio seconds from evaluation.json, and its judging seconds summed over its judges."""
    rows = []
    for cell in trained:
        result = _read_json(paths.cell_dir(exp.name, cell.id) / "result.json") or {}
        rows += [
            {"cell_id": cell.id, "phase": phase, "seconds": result[phase]}
            for phase in CELL_PHASES
            if result.get(phase) is not None
        ]
    for cell in evaluated:
        folder = paths.cell_dir(exp.name, cell.id)
        evaluation = _read_json(folder / EVALUATION_FILE) or {}
        rows += [
            {"cell_id": cell.id, "phase": phase, "seconds": evaluation[phase]}
            for phase in ("generation_seconds", "logratio_seconds")
            if evaluation.get(phase) is not None
        ]
        judged = [
            (_read_json(meta) or {}).get("seconds")
            for meta in sorted((folder / REWARDS_DIR).glob("*.json"))
        ]
        if any(s is not None for s in judged):
            seconds = sum(s for s in judged if s is not None)
            rows.append({"cell_id": cell.id, "phase": "judge_seconds", "seconds": seconds})
    return rows


def _oracle_rewards(samples: pd.DataFrame, examples: dict[str, PreferenceExample]) -> pd.DataFrame:
    known = samples[samples["prompt_id"].isin(examples)]
    rewards = OracleJudge().score([examples[p] for p in known["prompt_id"]], list(known["text"]))
    return known[["cell_id", "prompt_id", "sample_index"]].assign(judge=ORACLE, reward=rewards)


# --- the other tables ---------------------------------------------------------------------------


def diversity_rows(exp: Experiment, samples: pd.DataFrame, notes: list[str]) -> list[dict]:
    """PID, AID, distinct-n of each policy cell's K samples per prompt (greedy excluded)."""
    sampled = samples[samples["sample_index"] >= 0]
    embedder, rows = None, []
    for cell_key, of_cell in sampled.groupby("cell_id", sort=True):
        texts = {
            p: list(g.sort_values("sample_index")["text"])
            for p, g in of_cell.groupby("prompt_id", sort=True)
        }
        if len(texts) < 2 or min(len(t) for t in texts.values()) < 2:
            notes.append(f"{cell_key}: diversity needs >= 2 prompts with >= 2 samples each")
            continue
        embedder = embedder or load_embedder(exp.eval.embedder)  # loaded once, only if needed
        first = of_cell.iloc[0]
        rows.append(
            {
                **{c: first[c] for c in IDENTITY},
                **lexical_diversity(texts, embedder),
                "embedder": exp.eval.embedder,
            }
        )
    return rows


def curve_rows(exp: Experiment, cells: list[Cell]) -> list[dict]:
    """metrics.jsonl of every finished cell, one row per (step, metric)."""
    rows = []
    for cell in cells:
        path = paths.cell_dir(exp.name, cell.id) / "metrics.jsonl"
        for record in read_rows(path) if path.is_file() else []:
            step = record.pop("step")
            for metric, value in record.items():
                if isinstance(value, int | float) and math.isfinite(value):
                    rows.append(
                        {**_identity(cell), "step": step, "metric": metric, "value": float(value)}
                    )
    return rows


def logratio_rows(exp: Experiment, cells: list[Cell]) -> list[dict]:
    rows = []
    for cell in cells:
        path = paths.cell_dir(exp.name, cell.id) / LOGRATIOS_FILE
        for record in read_rows(path) if path.is_file() else []:
            rows.append({**_identity(cell), **record})
    return rows


def _prompt_text(example: PreferenceExample | None) -> str:
    if example is None:
        return ""
    if len(example.prompt) == 1:
        return example.prompt[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in example.prompt)


def judge_rows(
    exp: Experiment, rewards: pd.DataFrame, examples: dict[str, PreferenceExample]
) -> list[dict]:
    """judge_quality's rows, plus on synthetic data the oracle's own row and every judge's
    agreement with the oracle over pairs of the policies' samples to the same prompt."""
    by_judge: dict[str, dict] = {}
    folder = paths.runs_dir(exp.name) / JUDGES_DIR
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        row = json.loads(path.read_text())
        by_judge[row["judge"]] = row
    for judge in rewards["judge"].unique():
        by_judge.setdefault(judge, {"judge": judge, "agreement_heldout": None, "n_pairs": None})
    if exp.data.source == "synthetic" and examples:
        pairs = list(examples.values())
        by_judge[ORACLE] = {
            "judge": ORACLE,
            "agreement_heldout": agreement(OracleJudge(), pairs),
            "n_pairs": len(pairs),
            "split": "test",
            "input_format": OracleJudge.input_format,
        }
        oracle = rewards[rewards["judge"] == ORACLE].set_index(
            ["cell_id", "prompt_id", "sample_index"]
        )["reward"]
        for judge, row in by_judge.items():
            if judge == ORACLE:
                continue
            mine = rewards[rewards["judge"] == judge].set_index(
                ["cell_id", "prompt_id", "sample_index"]
            )["reward"]
            both = pd.DataFrame({"judge": mine, "oracle": oracle}).dropna().reset_index()
            groups = [g for _, g in both.groupby("prompt_id")]
            value, n = ordering_agreement(
                [g["judge"].to_numpy() for g in groups], [g["oracle"].to_numpy() for g in groups]
            )
            row.update(agreement_oracle=value, n_oracle_pairs=n)
    return [{"agreement_oracle": None, **row} for row in by_judge.values()]


# --- the folder -------------------------------------------------------------------------------


def size_order(models: list[str]) -> list[str]:
    """Presets and the paper's OPT sizes in size order, anything else after them as listed."""
    known = [*PRESETS, *PAPER_MODELS]
    return sorted(
        models, key=lambda m: (known.index(m) if m in known else len(known), models.index(m))
    )


def _frame(name: str, rows: list[dict]) -> pd.DataFrame:
    columns = list(TABLE_COLUMNS[name])
    frame = pd.DataFrame(rows)
    for column in columns:
        if column not in frame.columns:
            frame[column] = None
    extra = [c for c in frame.columns if c not in columns]
    return frame[columns + extra]


def build_tables(
    exp: Experiment, run_urls: dict[str, str]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Every contract table of the experiment (name -> frame) and notes on what was skipped."""
    notes: list[str] = []
    cells = expand_cells(exp)
    cell_rows = [cell_row(exp, c, run_urls) for c in cells]
    finished = [c for c, row in zip(cells, cell_rows, strict=True) if row["status"] != "failed"]
    # policies that trained, and the base rows (their samples exist once they were evaluated)
    policies = [c for c in evaluated_cells(exp) if c in finished or c.stage == BASE]
    # the negative controls count only in win rates: elsewhere they would double their original
    finished_ids = {c.id for c in finished}
    controls = [c for c in control_cells(exp) if c.resample_of in finished_ids]
    examples = (
        {ex.id: ex for ex in read_jsonl(heldout_path(exp))} if heldout_path(exp).is_file() else {}
    )
    samples = _load_cell_samples(exp, policies)
    control_samples = _load_cell_samples(exp, controls)
    rewards = _load_rewards(exp, policies + controls)
    if exp.data.source == "synthetic" and not samples.empty:
        generated = pd.concat([samples, control_samples], ignore_index=True)
        rewards = pd.concat(
            [rewards[rewards["judge"] != ORACLE], _oracle_rewards(generated, examples)],
            ignore_index=True,
        )
    usable = set(samples["cell_id"]) | set(control_samples["cell_id"])
    headline = judge_name(exp)
    headline_rewards = rewards[rewards["judge"] == headline]
    keys = ["cell_id", "prompt_id", "sample_index"]
    table = samples.merge(headline_rewards[[*keys, "reward"]], on=keys, how="left")
    if exp.data.source == "synthetic" and not samples.empty:
        oracle = rewards[rewards["judge"] == ORACLE][[*keys, "reward"]]
        table = table.merge(oracle.rename(columns={"reward": "oracle_reward"}), on=keys, how="left")
    table["prompt"] = [_prompt_text(examples.get(p)) for p in table["prompt_id"]]
    tables = {
        "cells": _frame("cells", cell_rows),
        "win_rates": _frame("win_rates", win_rate_rows(exp, rewards, usable, notes)),
        "diversity": _frame("diversity", diversity_rows(exp, samples, notes)),
        "judges": _frame("judges", judge_rows(exp, rewards, examples)),
        "curves": _frame("curves", curve_rows(exp, finished)),
        "logratios": _frame("logratios", logratio_rows(exp, policies)),
        "timings": _frame("timings", timing_rows(exp, finished, policies)),
        "samples": _frame("samples", table.to_dict("records")),
    }
    failed = [row["cell_id"] for row in cell_rows if row["status"] == "failed"]
    if failed:
        notes.insert(0, f"{len(failed)} cell(s) failed or did not finish: {', '.join(failed)}")
    return tables, list(dict.fromkeys(notes))  # one note per skipped comparison, not per judge


def collect_results(exp: Experiment, meta_extra: dict | None = None) -> Path:
    """Write `runs/<exp>/results/` (meta.json + one parquet per contract table); return it.

    `meta_extra` is merged into meta.json (e.g. prefect_flow_run_url, mlflow_parent_run_url;
    its "notes" are added to ours), except "cell_run_urls": {cell_id: MLflow run URL}, which
    fills cells.mlflow_run_url (a result.json or failure.json may also carry one).
    """
    extra = dict(meta_extra or {})
    run_urls = extra.pop("cell_run_urls", None) or {}
    tables, notes = build_tables(exp, run_urls)
    meta = {
        "experiment": exp.name, "data_source": exp.data.source, "judge": judge_name(exp),
        "models": size_order(exp.model_names), "orpo_lambdas": list(exp.orpo_lambdas),
        "dpo_betas": list(exp.dpo_betas), "seeds": list(exp.seeds),
        "methods": list(exp.methods), "judges": sorted(tables["judges"]["judge"].astype(str)),
        "eval": exp.eval.model_dump(mode="json"),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    manifest = paths.data_dir(exp.name) / "manifest.json"
    if manifest.is_file():
        meta["data_rows"] = manifest_line(json.loads(manifest.read_text()))
    meta["notes"] = [*notes, *(extra.pop("notes", None) or [])]
    meta.update(extra)
    out = paths.results_dir(exp.name)
    # Two runs of one experiment (a team sharing runs/) may collect at once: each writes its own
    # folder, and the finished one takes the results' place in two renames, never leaving a
    # half-deleted folder where the other run's report is reading (only, for the instant between
    # the renames, none).
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp = out.with_name(f"{out.name}.tmp-{tag}")
    tmp.mkdir(parents=True)
    for name, frame in tables.items():
        frame.to_parquet(tmp / table_file(name), index=False)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    _swap_into_place(tmp, out, tag)
    return out


def _swap_into_place(new: Path, out: Path, tag: str, attempts: int = 5) -> None:
    """Put folder `new` where `out` is: the old folder steps aside and is deleted afterwards.
    When another writer's folder lands in between, it steps aside too: the last writer wins."""
    aside: list[Path] = []
    try:
        for attempt in range(attempts):
            old = out.with_name(f"{out.name}.old-{tag}-{attempt}")
            try:
                out.rename(old)
                aside.append(old)
            except FileNotFoundError:  # none yet, or another writer's swap has it aside
                pass
            try:
                new.rename(out)
                return
            except OSError:  # another writer's folder landed first
                continue
        raise RuntimeError(f"could not put {new} in place of {out} in {attempts} tries")
    finally:
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


# --- the report -------------------------------------------------------------------------------


def rerender_report(experiment: str) -> Path:
    """Re-render `reports/<exp>/index.html` without training or evaluating: from the results
    tables logged to the experiment's latest MLflow parent run, else from `runs/<exp>/results/`.
    `experiment` is an experiment name or its YAML file."""
    from orpo.report.render import render_report
    from orpo.tracking import download_latest_results

    name = experiment
    if experiment.endswith((".yaml", ".yml")) or Path(experiment).is_file():
        name = load_experiment(experiment).name
    results = download_latest_results(name, paths.runs_dir(name) / "results-from-mlflow")
    if results is None:
        results = paths.results_dir(name)
    if not (results / META_FILE).is_file():
        raise FileNotFoundError(
            f"no results for experiment {name!r} in MLflow or at {results}: run the "
            "experiment (or its evaluation) first"
        )
    return render_report(results, paths.report_path(name))
