"""bench/procstat.py: the /proc readings the benchmarks report CPU and memory from."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import procstat  # bench/procstat.py

BURN = """
import time
while time.process_time() < 0.3:
    pass
print(time.process_time())
"""


def test_a_command_name_with_spaces_and_parentheses_is_skipped_whole() -> None:
    ticks, page = procstat.TICKS, procstat.PAGE
    fields = ["S", "41", *["0"] * 9, str(3 * ticks), str(2 * ticks), str(ticks), "0"]
    fields += ["0"] * 6 + ["5"]  # fields 18-23 (priority ... vsize), then rss (24)
    stat = procstat.parse_stat("42 (a (b) c) " + " ".join(fields))
    assert (stat.pid, stat.ppid) == (42, 41)
    assert (stat.user_s, stat.system_s, stat.children_user_s) == (3.0, 2.0, 1.0)
    assert stat.cpu_s == 5.0
    assert stat.rss_bytes == 5 * page


def test_own_stat_is_this_process() -> None:
    stat = procstat.stat(os.getpid())
    assert stat is not None
    assert stat.ppid == os.getppid()
    assert stat.rss_bytes > 0


def test_a_running_child_is_a_descendant() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        below = procstat.descendants(os.getpid(), procstat.all_stats())
        assert child.pid in [s.pid for s in below]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert procstat.stat(child.pid) is None


def test_the_cpu_of_an_ended_child_stays_in_its_parents_tree() -> None:
    before = procstat.tree_cpu_s(os.getpid())
    out = subprocess.run([sys.executable, "-c", BURN], capture_output=True, text=True, check=True)
    burned = float(out.stdout)
    after = procstat.tree_cpu_s(os.getpid())
    # The child's own reading, to within a clock tick or two of accounting.
    assert after - before >= burned - 2 / procstat.TICKS


def test_an_ended_root_costs_nothing() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procstat.tree_cpu_s(child.pid) == 0.0
