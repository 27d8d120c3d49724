"""The `orpo` command: plan, train, run, report, bench, serve, stop, runs, prune.

Every command validates its input before doing anything, and exits with status 2 and a message
naming the problem when the input is bad.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from orpo.bench import GLOBAL_BATCH
from orpo.config import ConfigError, expand_cells, load_experiment

EXIT_BAD_INPUT = 2


def _fail(message: str) -> int:
    print(f"orpo: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_plan(args) -> int:
    from orpo.data.counts import data_lines
    from orpo.plan import model_lines, plan_lines

    exp = load_experiment(args.experiment, args.set)
    print(
        f"experiment {exp.name}: {exp.data.source} data, models {', '.join(exp.model_names)}, "
        f"methods {', '.join(exp.methods)}, seeds {exp.seeds}"
    )
    print("\n".join(model_lines(exp)))
    print()
    print("\n".join(data_lines(exp)))
    print()
    print("\n".join(plan_lines(exp)))
    return 0


def cmd_train(args) -> int:
    from orpo import paths, tracking
    from orpo.data.prepare import prepare_data
    from orpo.pipeline import make_job, train_cell
    from orpo.training.job import CellJob

    if args.job:
        job = CellJob.read(args.job)
    else:
        if not (args.experiment and args.cell):
            return _fail("give a JOB.json, or --experiment FILE --cell CELL_ID")
        exp = load_experiment(args.experiment, args.set)
        cells = {c.id: c for c in expand_cells(exp)}
        if args.cell not in cells:
            return _fail(f"no cell {args.cell!r} in {exp.name}; `orpo plan` lists them")
        prepare_data(exp, paths.data_dir(exp.name))
        job = make_job(exp, cells[args.cell])
    created_run = job.mlflow_run_id is None and not args.no_mlflow
    if created_run:
        run_id = tracking.create_run(
            job.experiment,
            job.cell.id,
            tags={"orpo.cell_id": job.cell.id, "orpo.stage": job.cell.stage},
        )
        job = job.model_copy(
            update={"mlflow_run_id": run_id, "tracking_uri": tracking.default_tracking_uri()}
        )
    try:
        result = train_cell(job)
    except BaseException:
        if created_run:
            tracking.end_run(job.mlflow_run_id, "FAILED")
        raise
    if created_run:
        tracking.end_run(job.mlflow_run_id)
    print(
        json.dumps(
            {
                k: result[k]
                for k in ("cell_id", "status", "steps", "best_eval_loss", "wall_seconds")
                if k in result
            }
        )
    )
    return 0


STOP_GRACE_S = 10.0  # `orpo run`: from SIGTERM / Ctrl-C to exiting, at most


def _bound_the_stop() -> None:
    """After SIGTERM or Ctrl-C, give the flow STOP_GRACE_S to stop its cells and close its
    records, then kill what is left of its processes and exit anyway; a second signal does that
    at once. The orderly stop can take much longer: Prefect joins task threads rather than
    interrupting them (a generation in progress runs to its end), and a terminal's Ctrl-C also
    reaches Prefect's temporary API server (same process group), after which every Prefect call
    retries against the dead server for minutes. The signals are read from a wakeup fd, which
    Python writes whichever handler is installed (Prefect's own takes SIGTERM during a flow)."""
    import os
    import select
    import threading
    import time

    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write, warn_on_full_buffer=False)

    def watch() -> None:
        code, deadline, why = None, None, f"not stopped within {STOP_GRACE_S:g} s"
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([read], [], [], wait)[0]:
                break  # the grace is over
            signum = os.read(read, 1)[0]
            if signum not in (signal.SIGINT, signal.SIGTERM):
                continue
            if code is not None:
                why = "stopped again"
                break
            code, deadline = 128 + signum, time.monotonic() + STOP_GRACE_S
        print(f"orpo: {why}: killing what is left of the run", file=sys.stderr)
        _kill_children()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    threading.Thread(target=watch, name="orpo-stop-watch", daemon=True).start()


def _kill_children() -> None:
    """The cells' process groups, then every other child (the temporary Prefect API server)."""
    import contextlib

    import psutil

    from orpo.training.launch import stop_live_cells

    stop_live_cells(grace_s=0)
    children = psutil.Process().children()
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    for child in psutil.wait_procs(children, timeout=3)[1]:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


def cmd_run(args) -> int:
    import os

    from orpo.paths import prefect_home

    exp = load_experiment(args.experiment, args.set)  # validate before starting anything
    # Prefect reads its settings at import: point it at a project-local home first.
    os.environ["PREFECT_HOME"] = str(prefect_home())
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A new project home's temporary server first builds its database: on a cold 2-core
    # machine that took over Prefect's default 20 s, and the run failed before any cell.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.ablation import run_experiment

    # Prefect turns SIGTERM into an exception inside the flow, then re-sends it to the handler
    # that was there before: make that an orderly exit, so cells are stopped and atexit hooks
    # (the temporary Prefect API server among them) run instead of being orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _bound_the_stop()

    report = run_experiment(
        exp, experiment_file=str(Path(args.experiment).resolve()), overrides=args.set
    )
    print(f"report: {report}")
    return 0


def cmd_report(args) -> int:
    from orpo.evaluation.collect import rerender_report

    print(rerender_report(args.experiment))
    return 0


def cmd_bench(args) -> int:
    from orpo.bench import check_selection, parse_engine, run_benchmark

    try:
        engines = [parse_engine(e) for e in args.engines]
        check_selection(args.methods, engines, args.global_batch, args.rounds, args.paired)
    except ValueError as err:
        return _fail(str(err))
    run_benchmark(
        Path(args.out),
        steps=args.steps,
        models=args.models,
        methods=args.methods,
        engines=engines,
        against_trl=args.against == "trl",
        global_batch=args.global_batch,
        rounds=args.rounds,
        paired=args.paired,
    )
    return 0


def cmd_serve(args) -> int:
    from orpo.services import serve

    if args.workers < 1 or (args.worker_limit is not None and args.worker_limit < 1):
        return _fail("--workers and --worker-limit must be at least 1")
    serve(
        args.prefect_port,
        args.mlflow_port,
        db=args.db,
        workers=args.workers,
        worker_limit=args.worker_limit,
        pg_port=args.pg_port,
    )
    return 0


def cmd_stop(args) -> int:
    from orpo.services import stop

    stop()
    return 0


def cmd_runs(args) -> int:
    from orpo import store

    print("\n".join(store.runs_lines(store.experiment_name(args.experiment))))
    return 0


def cmd_prune(args) -> int:
    from orpo import store

    print("\n".join(store.prune_lines(store.experiment_name(args.experiment), args.dry_run)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    overrides = {
        "action": "append",
        "default": [],
        "metavar": "KEY=VALUE",
        "help": "override a field, e.g. --set orpo_lambdas=[0.2] (repeatable)",
    }

    p = sub.add_parser("plan", help="validate an experiment and print its cells")
    p.add_argument("experiment")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("train", help="train one cell (a job file, or an experiment's cell)")
    p.add_argument("job", nargs="?", help="a job.json written by the planner")
    p.add_argument("--experiment")
    p.add_argument("--cell")
    p.add_argument("--set", **overrides)
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("run", help="run a whole experiment as a Prefect flow")
    p.add_argument("experiment")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="re-render an experiment's HTML report from its results")
    p.add_argument("experiment", help="experiment name (or its YAML file)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="measure step time, tokens/s and memory per method")
    p.add_argument(
        "--out",
        default="benchmarks/results",
        help="folder for bench.md and bench.json (default benchmarks/results)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=8,
        help="optimizer steps per cell; s/step is the median after the first (default 8)",
    )
    p.add_argument(
        "--models",
        nargs="+",
        default=["opt-tiny", "opt-medium"],
        help="as in an experiment's models: presets, hub ids, folders, GGUF files or aliases "
        "(default opt-tiny opt-medium)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["sft", "dpo", "orpo"],
        help="training methods to time (default sft dpo orpo)",
    )
    p.add_argument(
        "--global-batch",
        type=int,
        default=GLOBAL_BATCH,
        help=f"pairs per optimizer step, split over an engine's processes (default "
        f"{GLOBAL_BATCH}; a GPU needs more to be busy)",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=["zero3x1", "zero3x2", "torch"],
        help="ZeRO-3 with 1 or 2 processes, and the plain-torch floor",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the engines of each (model, method) this many times in turn, each round in "
        "fresh cells; the tables add each round's ratios and their median, which a machine "
        "whose speed drifts from minute to minute needs (default 1)",
    )
    p.add_argument(
        "--paired",
        action="store_true",
        help="train the engines of each (model, method) at the same time, each in its own "
        "process, taking turns step by step, so that each ratio compares steps seconds apart "
        "(one-process engines only; needs the memory of all of them at once)",
    )
    p.add_argument(
        "--against",
        choices=["trl"],
        default=None,
        help="also run TRL's ORPOTrainer and DPOTrainer on the same model, rows and settings "
        "(needs the bench extra: pip install -e '.[bench]')",
    )
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser(
        "serve", help="start Prefect server + workers and the MLflow UI on 127.0.0.1"
    )
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument(
        "--db",
        choices=["sqlite", "postgres"],
        default="sqlite",
        help="stores of the Prefect server and MLflow: SQLite files (default), or a local "
        "PostgreSQL cluster in .run/postgres/ (the team set-up)",
    )
    p.add_argument("--pg-port", type=int, help="the cluster's port (default: its last, or 5433)")
    p.add_argument("--workers", type=int, default=1, help="process workers on the pool")
    p.add_argument(
        "--worker-limit", type=int, help="flow runs one worker takes at once (default: no limit)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stop", help="stop what `orpo serve` started")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("runs", help="list an experiment's stored cell results (by cell key)")
    p.add_argument("experiment", help="experiment name (or its YAML file)")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("prune", help="delete stored cell results no cell folder points at")
    p.add_argument("experiment", help="experiment name (or its YAML file)")
    p.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    p.set_defaults(func=cmd_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        return _fail(str(err))
    except (RuntimeError, FileNotFoundError) as err:  # a failed cell, a missing input
        print(f"orpo: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("orpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
