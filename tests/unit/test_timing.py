"""Where the time goes: phase timers, the launcher's start-up clock and the per-phase sums."""

import ctypes
import subprocess
import sys
import time

import pytest

from orpo.timing import (
    LAUNCHED_AT_ENV,
    HeapTrim,
    Phases,
    _malloc_trim,
    breakdown,
    breakdown_lines,
    drop_pages,
    peak_rss_mb,
    release_freed_memory,
    resident_mb,
    startup_seconds,
)

pytestmark = pytest.mark.unit


def test_phases_add_up_and_unknown_names_are_refused():
    phases = Phases()
    with phases("load_seconds"):
        time.sleep(0.01)
    phases.add("load_seconds", 1.0)
    assert 1.01 <= phases.seconds["load_seconds"] < 1.5
    with pytest.raises(ValueError, match="unknown phase 'loading'"):
        phases("loading")


def test_startup_is_measured_from_the_launch_or_absent(monkeypatch):
    monkeypatch.delenv(LAUNCHED_AT_ENV, raising=False)
    assert startup_seconds(time.time()) is None
    monkeypatch.setenv(LAUNCHED_AT_ENV, repr(100.0))
    assert startup_seconds(112.5) == pytest.approx(12.5)


def test_breakdown_sums_per_phase_in_phase_order():
    rows = [
        {"cell_id": "a", "phase": "train_seconds", "seconds": 3.0},
        {"cell_id": "a", "phase": "startup_seconds", "seconds": 5.0},
        {"cell_id": "b", "phase": "startup_seconds", "seconds": 7.0},
        {"cell_id": "b", "phase": "judge_seconds", "seconds": None},  # not recorded: left out
    ]
    table = breakdown(rows)
    assert [r["phase"] for r in table] == ["startup_seconds", "train_seconds"]
    assert table[0] == {
        "phase": "startup_seconds", "items": 2, "seconds": 12.0, "share": 0.8, "mean_seconds": 6.0
    }  # fmt: skip
    text = breakdown_lines(rows, 30.0, 2.0, 1.5)
    assert text.startswith("time: 30.0 s wall in the flow: 2.0 s set-up")
    assert "cell start-up (launcher, interpreter, imports)" in text and "80.0%" in text


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: there is no malloc_trim to call")
def test_freed_heap_memory_goes_back_to_the_os():
    import torch

    blocks = [torch.ones(16_000) for _ in range(4_000)]  # 64 KB each: heap, not mmap; 256 MB
    kept = blocks[-1]  # holds the top of the heap, so glibc cannot give the rest back by itself
    del blocks
    before = resident_mb()
    release_freed_memory()
    assert before - resident_mb() > 100, "the freed 256 MB stayed resident"
    assert kept.sum() == 16_000


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: madvise is not reached this way")
def test_a_buffers_dropped_pages_leave_memory_and_read_as_zeros_until_written():
    import torch

    buffer = torch.ones(64 * 2**18)  # 64 MB: a mapping of its own
    before = resident_mb()
    dropped = drop_pages(buffer)
    assert 63 * 2**20 <= dropped <= 64 * 2**20  # all whole pages inside it
    assert before - resident_mb() > 60, "the dropped pages stayed resident"
    ones = int((buffer == 1).sum())
    assert ones == (buffer.numel() * 4 - dropped) // 4  # what lies outside whole pages stays
    buffer.fill_(2.0)  # written again: faulted back in, and it holds what was written
    assert float(buffer.sum()) == 2.0 * buffer.numel()
    assert drop_pages(torch.ones(16)) == 0  # within one page: nothing to drop


def test_a_started_process_reports_its_own_peak_not_its_parents():
    held = bytearray(400 * 2**20)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: 400 MB resident here
    assert peak_rss_mb() > 400
    code = "from orpo.timing import peak_rss_mb; print(peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # getrusage's ru_maxrss would say > 400 here: Linux keeps the parent's peak over the exec
    assert float(out.stdout) < 150
    del held


@pytest.mark.skipif(_malloc_trim() is None, reason="not glibc: there is no malloc_trim to call")
def test_the_heap_is_trimmed_only_once_enough_freed_memory_piled_up():
    import torch

    trim = HeapTrim(slack_mb=64)
    assert trim()  # the first call always trims, and notes what it left
    small = [torch.ones(16_000) for _ in range(100)]  # 6 MB: below the slack
    del small
    assert not trim()
    blocks = [torch.ones(16_000) for _ in range(4_000)]  # 256 MB of heap
    kept = blocks[-1]
    del blocks
    before = resident_mb()
    assert trim()
    assert before - resident_mb() > 100
    assert not trim()  # nothing new since
    assert kept.sum() == 16_000


_MAPPED_AFTER_REUSE = """
import ctypes, sys
from orpo.timing import map_large_blocks, temporaries_on_heap

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2
was_set = map_large_blocks() if sys.argv[1] == "set" else False
size = 3 << 20  # 3 MiB: above 1 MiB, below glibc's dynamic ceiling of 32 MiB
libc.free(libc.malloc(size))  # by default this raises the threshold to 3 MiB
mapped = libc.mallinfo2().hblks  # blocks that have a mapping of their own
block = libc.malloc(size)
print(was_set, libc.mallinfo2().hblks - mapped)
libc.free(block)
with temporaries_on_heap():  # an optimizer step: the same sizes again, from the heap
    libc.free(libc.malloc(size))
    mapped = libc.mallinfo2().hblks
    block = libc.malloc(size)
    print(libc.mallinfo2().hblks - mapped)
    libc.free(block)
block = libc.malloc(size)  # after the step, the training threshold holds again
print(libc.mallinfo2().hblks - mapped)
libc.free(block)
"""


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


@pytest.mark.skipif(not _has_mallinfo2(), reason="not glibc 2.33 or later: no mallinfo2 to read")
def test_large_blocks_keep_their_own_mapping_once_set(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

    def run(*args: str) -> list[str]:
        cmd = [sys.executable, "-c", _MAPPED_AFTER_REUSE, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()

    # glibc's default moves the threshold up to the freed block: the second one comes from the
    # heap; and the optimizer step's block changes nothing there
    assert run("default") == ["False", "0", "0", "0"]
    # set: its own mapping, except within an optimizer step, and again after it
    assert run("set") == ["True", "1", "0", "1"]
    # a threshold the user gave glibc wins: the lab leaves it alone
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(64 << 20))
    assert run("set") == ["False", "0", "0", "0"]
