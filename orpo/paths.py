"""Where things live on disk. Everything is under one project home (ORPO_HOME, default: the
repository when running from a checkout, else the current directory), so tests can point the
whole system at a temporary folder with one environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def project_home() -> Path:
    if env := os.environ.get("ORPO_HOME"):
        return Path(env).resolve()
    repo = Path(__file__).resolve().parents[1]
    return repo if (repo / "pyproject.toml").is_file() else Path.cwd().resolve()


def prefect_home() -> Path:
    """Prefect's home for this project: PREFECT_HOME when set, else `.prefect` in the project
    home; created with its parents, because Prefect creates only the last folder and, under a
    new ORPO_HOME, its temporary server then failed on a database it could not open."""
    home = Path(os.environ.get("PREFECT_HOME") or project_home() / ".prefect")
    home.mkdir(parents=True, exist_ok=True)
    return home


def runs_dir(experiment: str) -> Path:
    return project_home() / "runs" / experiment


def data_dir(experiment: str) -> Path:
    return runs_dir(experiment) / "data"


def cell_dir(experiment: str, cell_id: str) -> Path:
    """The cell's folder as readers see it. A trained cell's is a view: a symlink to the store
    entry of its current key (`orpo.store`); a never-trained cell's is a real folder."""
    return runs_dir(experiment) / "cells" / cell_id


def store_dir(experiment: str) -> Path:
    """Trained cells by content: `store/<cell id>/<cell key>/` (see `orpo.store`)."""
    return runs_dir(experiment) / "store"


def results_dir(experiment: str) -> Path:
    return runs_dir(experiment) / "results"


def report_path(experiment: str) -> Path:
    return project_home() / "reports" / experiment / "index.html"
