"""`orpo.turns`: processes that share a turns folder run their steps one at a time, in round
robin, none before all have set up, and a participant that ends early never blocks the rest."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from orpo.turns import StepTurns, mark_done, turns_spec

pytestmark = pytest.mark.unit


def _participant(spec: str, steps: int, log_path: str, late_s: float, finish: bool) -> None:
    turns = StepTurns.from_spec(spec)
    time.sleep(late_s)  # a slow start-up: nobody may step before this one is ready

    def log(text: str) -> None:
        with open(log_path, "a") as f:
            f.write(f"{turns.index} {text}\n")

    log("arrived")
    for _ in range(steps):
        with turns.step():
            log("start")
            time.sleep(0.02)  # long enough for another process to barge in, were it allowed
            log("end")
    if finish:
        turns.finish()
        log("finished")


def _run(tmp_path, plans: list[tuple[int, float, bool]]) -> list[tuple[int, str]]:
    """Start one process per (steps, late_s, finish) plan; like the bench, mark each done
    once its process has ended. Returns the shared log's lines in order."""
    folder, log_path = tmp_path / "turns", tmp_path / "log"
    folder.mkdir()
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(
            target=_participant,
            args=(turns_spec(folder, i, len(plans)), steps, str(log_path), late_s, finish),
        )
        for i, (steps, late_s, finish) in enumerate(plans)
    ]
    for p in procs:
        p.start()
    pending = dict(enumerate(procs))
    deadline = time.monotonic() + 60
    while pending and time.monotonic() < deadline:
        for i, p in list(pending.items()):
            if not p.is_alive():
                mark_done(folder, i)
                del pending[i]
        time.sleep(0.01)
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    assert not pending, f"participants {sorted(pending)} never finished"
    return [
        (int(i), text)
        for i, text in (line.split(" ", 1) for line in log_path.read_text().splitlines())
    ]


def _steps(lines):
    return [(i, text) for i, text in lines if text in ("start", "end")]


def test_steps_run_one_at_a_time_in_round_robin_after_everyone_is_ready(tmp_path):
    lines = _run(tmp_path, [(3, 0.0, True), (3, 0.0, True), (3, 0.3, True)])
    steps = _steps(lines)
    # never two steps at once: each start is followed by the same participant's end
    assert steps == [(i, text) for i, _ in steps[::2] for text in ("start", "end")]
    assert [i for i, text in steps if text == "start"] == [0, 1, 2] * 3
    # the late participant arrived before anyone's first step
    assert lines.index((2, "arrived")) < lines.index((0, "start"))
    # nobody finished (went on to its export) while another still had a step to run
    last_end = max(n for n, line in enumerate(lines) if line[1] == "end")
    assert all(n > last_end for n, line in enumerate(lines) if line[1] == "finished")


def test_a_participant_that_ends_early_does_not_block_the_others(tmp_path):
    # participant 1 dies after one step without finishing (a crashed cell): the bench marks
    # it done when its process ends, and the others go on taking turns without it
    lines = _run(tmp_path, [(3, 0.0, True), (1, 0.0, False), (3, 0.0, True)])
    starts = [i for i, text in _steps(lines) if text == "start"]
    assert starts == [0, 1, 2, 0, 2, 0, 2]
    assert {i for i, text in lines if text == "finished"} == {0, 2}


def test_a_participant_that_never_gets_ready_is_skipped_once_marked_done(tmp_path):
    lines = _run(tmp_path, [(2, 0.0, True), (0, 0.0, False)])  # 1 fails before its first step
    assert [i for i, text in _steps(lines) if text == "start"] == [0, 0]


def test_a_spec_names_index_count_and_folder_and_a_bad_index_is_refused(tmp_path):
    turns = StepTurns.from_spec(turns_spec(tmp_path / "a:b", 1, 3))
    assert (turns.index, turns.count, turns.folder) == (1, 3, tmp_path / "a:b")
    assert StepTurns.from_spec(None) is None and StepTurns.from_spec("") is None
    with pytest.raises(ValueError, match="turn index 3: must be in 0..2"):
        StepTurns(tmp_path, 3, 3)


def test_waiting_gives_up_with_a_clear_error(tmp_path):
    turns = StepTurns(tmp_path, 1, 2, timeout_s=0.05)  # participant 0 never shows up
    with pytest.raises(TimeoutError, match="participant 1 of 2 waited 0 s for its turn to step"):
        turns.begin_step()


def _orphan(folder: str, queue) -> None:
    """Forks a participant that waits for a turn that never comes, and exits at once (as a
    killed bench would), leaving it an orphan."""
    if os.fork() == 0:
        try:
            StepTurns(Path(folder), 1, 2).begin_step()  # participant 0 never shows up
            queue.put("stepped")
        except RuntimeError as err:
            queue.put(str(err))
        finally:
            queue.close()
            queue.join_thread()
            os._exit(0)


def test_a_participant_whose_bench_is_gone_stops_waiting(tmp_path):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    starter = ctx.Process(target=_orphan, args=(str(tmp_path), queue))
    starter.start()
    starter.join()
    assert "the process that started it is gone" in queue.get(timeout=30)
