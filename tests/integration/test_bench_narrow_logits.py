"""benchmarks/narrow_logits.py runs end to end on a preset: both settings train, and the
narrowed one gets (N, V) logits for fewer positions than the batch has."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "narrow_logits.py"


def test_the_narrow_logits_benchmark_prints_both_settings():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--model", "opt-tiny", "--method", "orpo"]
        + ["--steps", "1", "--batch", "4", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    assert re.search(r"median s/step: every position [\d.]+, narrowed [\d.]+: [\d.]+x", out)
    full = re.search(r"logits, every position: \((\d+), (\d+), (\d+)\)", out)
    narrow = re.search(r"logits, narrowed: \((\d+), (\d+)\)", out)
    assert full and narrow, out
    rows, length, vocab = map(int, full.groups())
    assert rows == 8  # 4 pairs: chosen and rejected rows
    assert int(narrow.group(2)) == vocab
    assert 0 < int(narrow.group(1)) < rows * length
