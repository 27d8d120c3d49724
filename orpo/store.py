"""Trained cells stored by content: results are never overwritten.

A cell trains into a store entry named by its key (`orpo.training.job.cell_key`: config, input
checkpoint content and data version), and its folder `runs/<exp>/cells/<cell id>` is a view: a
relative symlink to the entry of the cell's current key, re-pointed atomically when the key
changes. So:

- changing a hyper-parameter that is not in the cell id (`--set orpo.lr=...`) trains into a new
  entry and keeps the earlier one; changing it back points the view at the earlier entry again,
  and its finished result is reused;
- a run that died part-way resumes from its entry's checkpoints only under the same key;
- `orpo runs EXPERIMENT` lists the entries, `orpo prune EXPERIMENT` deletes those no view points
  at (never the current ones).

Layout, per experiment:

    runs/<exp>/cells/<view>  ->  ../store/<view>/<key>/     (the view: what readers open)
    runs/<exp>/store/<view>/<key>/entry.json                 key, cell id, experiment, created,
                                                             finished (see `ENTRY_FILE`)
    runs/<exp>/store/<view>/<key>/{key, job.json, metrics.jsonl, checkpoints/, model/, ...}

Entries are grouped by view name (the cell id for every cell `make_job` plans), not pooled in
one `store/<key>/`: the key covers the cell id, so two planned cells never share a key anyway,
but a job copied to another folder (`out_dir=<cell>-resume`, as tests and benchmarks do) keeps
its key, and must train there, not find its original's result.

A real folder at a view's place (a cell trained before the store existed, or one written
directly) is moved into the store, never deleted: to `store/<view>/<its key file>`, or to
`store/<view>/legacy-<time>` when it has no key. Folders of cells that never train (the
resampled negative controls, evaluation-only folders) stay real folders under cells/.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from orpo import paths

ENTRY_FILE = "entry.json"
"""{key, cell_id, view, experiment, stage, created, finished[, finished_at, migrated_from]}."""
KEY_FILE = "key"
_KEY = re.compile(r"[0-9a-f]{16}")


def store_root(view: Path) -> Path:
    """The folder holding the entries of the view `.../cells/<name>`: `.../store/<name>/`
    (`<parent>/store/<name>/` for a view outside a `cells` folder)."""
    view = Path(view)
    base = view.parent.parent if view.parent.name == "cells" else view.parent
    return base / "store" / view.name


def entry_dir(view: Path, key: str) -> Path:
    return store_root(view) / key


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    tmp.replace(path)


def read_meta(entry: Path) -> dict:
    try:
        return json.loads((entry / ENTRY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_finished(entry: Path) -> bool:
    """The worker writes result.json last, after model/: both present means it finished."""
    return (entry / "result.json").is_file() and (entry / "model").is_dir()


# --- the view -------------------------------------------------------------------------------


def point(view: Path, entry: Path) -> None:
    """Make `view` a relative symlink to `entry`, atomically (a new link renamed over the old
    one: a reader sees the old entry or the new one, never nothing)."""
    view = Path(view)
    target = os.path.relpath(entry, view.parent)
    if view.is_symlink() and os.readlink(view) == target:
        return
    view.parent.mkdir(parents=True, exist_ok=True)
    tmp = view.parent / f".{view.name}.link-{os.getpid()}-{secrets.token_hex(4)}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, view)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def migrate(view: Path, experiment: str, cell_id: str) -> Path | None:
    """Move the real folder at `view` into the store (see the module docstring); returns the
    entry it became, or None for an empty folder (removed: nothing in it to lose)."""
    view = Path(view)
    if not any(view.iterdir()):
        view.rmdir()
        return None
    key_file = view / KEY_FILE
    key = key_file.read_text().strip() if key_file.is_file() else None
    key = key if key and _KEY.fullmatch(key) else None
    mtime = view.stat().st_mtime
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(mtime))
    root = store_root(view)
    root.mkdir(parents=True, exist_ok=True)
    name = key or f"legacy-{stamp}"
    target, n = root / name, 1
    while target.exists() or target.is_symlink():  # never onto an entry: rename would merge
        target, n = root / f"{name}-legacy-{stamp}-{n}", n + 1
    try:
        os.rename(view, target)
    except FileNotFoundError:
        return None  # another process moved it first
    if not (target / ENTRY_FILE).is_file():
        _write_json(
            target / ENTRY_FILE,
            {
                "key": key,
                "cell_id": cell_id,
                "view": view.name,
                "experiment": experiment,
                "created": _iso(mtime),
                "finished": is_finished(target),
                "migrated_from": str(view),
                "migrated_at": _now(),
            },
        )
    return target


def open_entry(job, key: str) -> Path:
    """Point the job's folder (`job.out`, the view) at the store entry of `key`, creating the
    entry; a real folder in the view's place is migrated first. Returns the entry."""
    view = job.out
    entry = entry_dir(view, key)
    if view.exists() and not view.is_dir() and not view.is_symlink():
        raise FileExistsError(f"cell {job.cell.id}: {view} is a file, not a cell folder")
    for _ in range(3):
        if view.is_dir() and not view.is_symlink():
            migrate(view, job.experiment, job.cell.id)
        entry.mkdir(parents=True, exist_ok=True)
        if not (entry / ENTRY_FILE).is_file():
            _write_json(
                entry / ENTRY_FILE,
                {
                    "key": key,
                    "cell_id": job.cell.id,
                    "view": view.name,
                    "experiment": job.experiment,
                    "stage": job.cell.stage,
                    "created": _now(),
                    "finished": False,
                },
            )
        try:
            point(view, entry)
            return entry
        except OSError as err:  # a real folder appeared at the view meanwhile: migrate it too
            if err.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise RuntimeError(f"cell {job.cell.id}: could not point {view} at {entry}")


def mark_finished(entry: Path) -> None:
    meta = read_meta(entry)
    _write_json(entry / ENTRY_FILE, {**meta, "finished": True, "finished_at": _now()})


# --- listing and pruning --------------------------------------------------------------------


@dataclass
class Entry:
    path: Path
    view: str
    key: str | None
    cell_id: str
    state: str  # finished | partial | empty
    size: int
    created: float
    views: list[str] = field(default_factory=list)  # the views pointing at it

    @property
    def current(self) -> bool:
        return bool(self.views)


def folder_size(folder: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(folder):  # symlinks are not followed
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _state(entry: Path) -> str:
    if is_finished(entry):
        return "finished"
    if any((entry / name).exists() for name in ("checkpoints", "metrics.jsonl", "model")):
        return "partial"
    return "empty"


def _views(experiment: str) -> dict[Path, list[str]]:
    """Store entry (resolved) -> names of the symlinks under cells/ that point at it."""
    found: dict[Path, list[str]] = {}
    cells = paths.runs_dir(experiment) / "cells"
    for link in sorted(cells.iterdir()) if cells.is_dir() else []:
        if link.is_symlink() and not link.name.startswith("."):
            found.setdefault(Path(os.path.realpath(link)), []).append(link.name)
    return found


def list_entries(experiment: str) -> list[Entry]:
    """Every store entry of the experiment, by view then age; reads no model."""
    views = _views(experiment)
    store = paths.store_dir(experiment)
    entries = []
    for group in sorted(store.iterdir()) if store.is_dir() else []:
        if not group.is_dir() or group.is_symlink():
            continue
        for path in group.iterdir():
            if not path.is_dir() or path.is_symlink():
                continue
            meta = read_meta(path)
            try:
                created = datetime.fromisoformat(meta["created"]).timestamp()
            except (KeyError, TypeError, ValueError):
                created = path.stat().st_mtime
            entries.append(
                Entry(
                    path=path,
                    view=group.name,
                    key=meta.get("key", path.name if _KEY.fullmatch(path.name) else None),
                    cell_id=meta.get("cell_id", group.name),
                    state=_state(path),
                    size=folder_size(path),
                    created=created,
                    views=views.get(path.resolve(), []),
                )
            )
    return sorted(entries, key=lambda e: (e.view, e.created, e.path.name))


def real_cell_folders(experiment: str) -> list[Path]:
    """Real folders under cells/ (not views): never-trained cells (resampled controls) and
    cells trained before the store, moved into it when they next train."""
    cells = paths.runs_dir(experiment) / "cells"
    return [
        p
        for p in (sorted(cells.iterdir()) if cells.is_dir() else [])
        if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
    ]


def prune(experiment: str, dry_run: bool = False) -> list[Entry]:
    """Delete the entries no view points at (all of them under `dry_run`: none); returns them.
    Refuses while a run of the experiment is alive (`orpo.live_runs`): a cell of it may be
    about to point its view at an entry that is not current yet."""
    from orpo.live_runs import others_alive

    if not dry_run and (alive := others_alive(experiment, flow_run_id="")):
        hosts = ", ".join(f"{e.host} pid {e.pid}" for e in alive)
        raise RuntimeError(
            f"experiment {experiment!r} has a live run ({hosts}; registered in "
            f"{paths.runs_dir(experiment) / 'live'}): prune it after that run ends"
        )
    stale = prunable(list_entries(experiment))
    if not dry_run:
        cells = paths.runs_dir(experiment) / "cells"
        for tmp in cells.glob(".*.link-*") if cells.is_dir() else []:
            if tmp.is_symlink():  # left by a process killed while re-pointing a view
                tmp.unlink(missing_ok=True)
        for entry in stale:
            shutil.rmtree(entry.path)
            try:
                entry.path.parent.rmdir()  # the view's group, when that was its last entry
            except OSError:
                pass
    return stale


def prunable(entries: list[Entry]) -> list[Entry]:
    """Entries no view points at, except a view's newest finished entry when its current one
    is not finished: a cell re-points its view when it starts (before it gets a training
    slot), so a changed run that was stopped before it trained must not cost the last result."""
    keep = set()
    for view in {e.view for e in entries}:
        own = [e for e in entries if e.view == view]
        if not any(e.current and e.state == "finished" for e in own):
            finished = [e for e in own if e.state == "finished"]
            if finished:
                keep.add(max(finished, key=lambda e: e.created).path)
    return [e for e in entries if not e.current and e.path not in keep]


# --- the command's text ---------------------------------------------------------------------


def experiment_name(argument: str) -> str:
    """An experiment name, or its YAML file; a clear error when it has no runs folder."""
    from orpo.config import ConfigError, load_experiment

    name = argument
    if argument.endswith((".yaml", ".yml")) or Path(argument).is_file():
        name = load_experiment(argument).name
    if not paths.runs_dir(name).is_dir():
        runs = paths.project_home() / "runs"
        known = sorted(
            p.name for p in (runs.iterdir() if runs.is_dir() else []) if (p / "store").is_dir()
        )
        raise ConfigError(
            f"EXPERIMENT {argument!r}: no runs folder {paths.runs_dir(name)} (experiments with "
            f"stored cells: {', '.join(known) or 'none'}; give an experiment name or its YAML file)"
        )
    return name


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def human_age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def runs_lines(experiment: str) -> list[str]:
    entries = list_entries(experiment)
    now = time.time()
    lines = [f"{'VIEW':<32} {'KEY':<34} {'STATE':<8} {'SIZE':>9} {'AGE':>5}  CURRENT"]
    for e in entries:
        lines.append(
            f"{e.view:<32} {e.path.name:<34} {e.state:<8} {human_size(e.size):>9} "
            f"{human_age(now - e.created):>5}  {'yes' if e.current else '-'}"
        )
    stale = prunable(entries)
    lines.append(
        f"{len(entries)} entries in {paths.store_dir(experiment)}, {len(entries) - len(stale)} "
        f"current; `orpo prune {experiment}` would free {human_size(sum(e.size for e in stale))}"
        f" ({len(stale)} entries)"
    )
    real = real_cell_folders(experiment)
    if real:
        lines.append(
            f"{len(real)} real folder(s) under cells/, not in the store (never-trained cells such "
            "as resampled controls, or cells trained before the store; those move into it when "
            f"they next train): {', '.join(p.name for p in real)}"
        )
    return lines


def prune_lines(experiment: str, dry_run: bool) -> list[str]:
    stale = prune(experiment, dry_run)
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {e.path} ({e.state}, {human_size(e.size)})" for e in stale]
    lines.append(
        f"{verb} {len(stale)} entries, {human_size(sum(e.size for e in stale))}; "
        "entries a view points at are kept"
    )
    return lines
