"""Training steps in turn across processes, for `orpo bench --paired`.

The bench can start the engines of one (model, method) at the same time, each in a process of
its own, and let exactly one of them run a training step at a time, in round robin. Two paired
steps then run seconds apart on the same machine; cells run one after the other are minutes
apart, and on a machine whose speed drifts (other tenants take its cores) their ratio carries
that drift. Each process keeps its own interpreter, heap and peak-memory figure.

The processes share a folder:
- `ready-<i>`: participant i has set up and is about to run its first step;
- `turn`: the participant whose step is next (absent: participant 0);
- `done-<i>`: participant i ran its last step, or its process ended (the bench writes it for a
  cell whose process returned or failed, so that a crash never leaves the others waiting).
Nobody steps before every participant is ready or done, and a done participant's turn passes
to the next one. After its last step a participant waits until all are done, so that its
export does not run beside another's timed step.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TURNS_ENV = "ORPO_BENCH_TURNS"  # "<index>:<count>:<folder>", set by the bench for a process


def turns_spec(folder: Path, index: int, count: int) -> str:
    """The value of TURNS_ENV for participant `index` of `count`."""
    return f"{index}:{count}:{folder}"


def mark_done(folder: Path, index: int) -> None:
    (Path(folder) / f"done-{index}").touch()


class StepTurns:
    """One participant's view: `with turns.step(): ...` (or `begin_step()` ... `end_step()`)
    around each training step, then `finish()` after the last one."""

    def __init__(self, folder: Path, index: int, count: int, *, timeout_s: float = 7200.0):
        if not 0 <= index < count:
            raise ValueError(f"turn index {index}: must be in 0..{count - 1}")
        self.folder, self.index, self.count = Path(folder), index, count
        self.timeout_s = timeout_s
        self.parent = os.getppid()  # the bench that started this process

    @classmethod
    def from_spec(cls, spec: str | None) -> StepTurns | None:
        """From TURNS_ENV's value; None when unset (a process that steps alone)."""
        if not spec:
            return None
        index, count, folder = spec.split(":", 2)
        return cls(Path(folder), int(index), int(count))

    @classmethod
    def from_env(cls) -> StepTurns | None:
        return cls.from_spec(os.environ.get(TURNS_ENV))

    @contextmanager
    def step(self) -> Iterator[None]:
        self.begin_step()
        try:
            yield
        finally:
            self.end_step()

    def begin_step(self) -> None:
        (self.folder / f"ready-{self.index}").touch()
        self._wait(self._my_turn, "its turn to step")

    def end_step(self) -> None:
        self._write_turn((self.index + 1) % self.count)

    def finish(self) -> None:
        mark_done(self.folder, self.index)
        self._wait(lambda: all(self._done(j) for j in range(self.count)), "the others' last steps")

    def _done(self, j: int) -> bool:
        return (self.folder / f"done-{j}").exists()

    def holder(self) -> int | None:
        """Whose step is next: the turn file's participant, or the first after it that is not
        done; None when all are done."""
        try:
            start = int((self.folder / "turn").read_text())
        except (FileNotFoundError, ValueError):  # not written yet (or mid-replace): 0's turn
            start = 0
        for k in range(self.count):
            j = (start + k) % self.count
            if not self._done(j):
                return j
        return None

    def _my_turn(self) -> bool:
        everyone_ready = all(
            (self.folder / f"ready-{j}").exists() or self._done(j) for j in range(self.count)
        )
        return everyone_ready and self.holder() == self.index

    def _write_turn(self, j: int) -> None:
        tmp = self.folder / f"turn.{self.index}.tmp"
        tmp.write_text(str(j))
        os.replace(tmp, self.folder / "turn")  # readers see the old or the new value, whole

    def _wait(self, ready, what: str) -> None:
        began = time.monotonic()
        while not ready():
            if os.getppid() != self.parent:  # the bench was killed: nobody will mark it done
                raise RuntimeError(
                    f"participant {self.index} of {self.count}: the process that started it "
                    f"is gone, so the turns in {self.folder} will not move on"
                )
            if time.monotonic() - began > self.timeout_s:
                raise TimeoutError(
                    f"participant {self.index} of {self.count} waited {self.timeout_s:.0f} s for "
                    f"{what} in {self.folder}"
                )
            time.sleep(0.005)
