"""A training job: one cell with everything resolved (paths, hyper-parameters, run id).

The orchestrator (or `orpo train`) writes it as `job.json` in the cell folder; the worker
processes started by the launcher read it. It is the single source of what the cell does, so
its hash is the cell's cache key (together with the hashes of its input checkpoints and data).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from orpo.config import Cell, LoraConfig, NllScope, OptimConfig, ResourcesConfig


class CellJob(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str
    cell: Cell
    model: str = Field(description="preset name or hub id/path the cell's model is built from")
    init_from: str | None = Field(None, description="checkpoint folder to start from")
    data_dir: str = Field(description="prepared data: train/eval/test.jsonl and tokenizer/")
    out_dir: str = Field(description="the cell's folder")
    optim: OptimConfig
    resources: ResourcesConfig = ResourcesConfig()
    nll_scope: NllScope = "response"
    max_length: int = 128
    max_prompt_length: int = 64
    ref_cache_dir: str | None = Field(None, description="DPO reference log-prob cache folder")
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    trust_remote_code: bool = False
    keep_dropout: bool = Field(False, description="keep the checkpoint's dropout when training")
    lora: LoraConfig | None = Field(None, description="train LoRA adapters only (merged on export)")

    @property
    def out(self) -> Path:
        return Path(self.out_dir)

    def write(self, path: Path | None = None) -> Path:
        path = path or self.out / "job.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> CellJob:
        return cls.model_validate_json(Path(path).read_text())

    def training_params(self) -> dict:
        """What the cell logs as MLflow params: everything that shapes its training."""
        return self.model_dump(
            exclude={
                "out_dir",
                "data_dir",
                "mlflow_run_id",
                "tracking_uri",
                "ref_cache_dir",
            }
        )


# Content hashes by (path, size, mtime) of every file: a cell's key, its cache check, its
# reference-log-prob cache and its evaluation all hash the same checkpoint and data folders,
# which for a real model means gigabytes read several times per process without this.
_HASHES: dict[tuple, str] = {}


def hash_files(paths: list[Path]) -> str:
    stats = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(paths))
    if stats not in _HASHES:
        _HASHES[stats] = _hash_contents(sorted(paths))
    return _HASHES[stats]


def _hash_contents(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def hash_dir(
    folder: str | Path, patterns=("*.safetensors", "*.json", "*.jsonl", "*.txt", "*.jinja")
) -> str:
    folder = Path(folder)
    files = [p for pat in patterns for p in folder.rglob(pat) if p.is_file()]
    if not files:
        raise FileNotFoundError(f"nothing to hash in {folder}")
    return hash_files(files)


# The optimizer implementation both engines step with (`engine.adamw`). It is part of every
# cell's key: another implementation rounds differently, so its stored cells are other results.
OPTIMIZER = "torch.optim.AdamW(fused=True)"

# Scheduling knobs: how many cells share the machine, retries, threads, which hosts. They do not
# change what a cell computes, so changing them must not retrain finished cells.
_SCHEDULING_FIELDS = {"max_parallel_cells", "retries", "threads_per_proc", "hostfile"}


def cell_key(job: CellJob) -> str:
    """Config + input checkpoint (and a local model folder) + data version, by content: same
    key, same result."""
    payload = job.training_params()
    payload["resources"] = {
        k: v for k, v in payload["resources"].items() if k not in _SCHEDULING_FIELDS
    }
    payload["optimizer"] = OPTIMIZER
    payload["data_version"] = hash_dir(job.data_dir)
    payload["init_version"] = hash_dir(job.init_from) if job.init_from else None
    payload.pop("init_from")  # the content hash above stands for it; paths may move
    if Path(job.model).is_dir():  # a local checkpoint: overwritten in place, it is a new input
        payload["model"] = hash_dir(job.model)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
