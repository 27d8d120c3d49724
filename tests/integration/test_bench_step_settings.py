"""benchmarks/step_settings.py runs end to end on a preset, for each setting: both sides train;
narrowed logits are (N, V) for fewer positions than the batch has; the real tokens are fewer
than the padded batch's positions."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_settings.py"


def run(setting: str) -> str:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--setting", setting, "--model", "opt-tiny"]
        + ["--method", "orpo", "--steps", "1", "--batch", "4", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout


def test_the_narrow_logits_benchmark_prints_both_sides():
    out = run("narrow-logits")
    assert re.search(r"median s/step: every position [\d.]+, narrowed [\d.]+: [\d.]+x", out)
    full = re.search(r"logits, every position: \((\d+), (\d+), (\d+)\)", out)
    narrow = re.search(r"logits, narrowed: \((\d+), (\d+)\)", out)
    assert full and narrow, out
    rows, length, vocab = map(int, full.groups())
    assert rows == 8  # 4 pairs: chosen and rejected rows
    assert int(narrow.group(2)) == vocab
    assert 0 < int(narrow.group(1)) < rows * length


def test_the_tokens_only_feed_forward_benchmark_prints_both_sides():
    out = run("tokens-only-feed-forward")
    assert re.search(
        r"median s/step: over the padding [\d.]+, real tokens only [\d.]+: [\d.]+x", out
    )
    counted = re.search(r"real tokens: (\d+) of (\d+) positions", out)
    assert counted, out
    assert 0 < int(counted.group(1)) < int(counted.group(2))
