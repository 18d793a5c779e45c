"""bench/goal.py: the goal lines `make bench` gathers from every benchmark's output."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import goal  # bench/goal.py


def test_a_goal_line_reads_back_as_the_goal_it_states() -> None:
    stated = goal.Goal("replay / fetch + decode", "2.74", "<= 1.3", False)
    assert goal.parse(goal.line(stated)) == stated
    met = goal.Goal("projection lag p99", "80.0 ms", "< 100 ms", True)
    assert goal.parse(goal.line(met)) == met


def test_other_lines_are_not_goals() -> None:
    assert goal.parse("ratio pass1 exec/s / POST + INSERT ceiling: 0.14") is None
    assert goal.parse("goal | only | three parts") is None
    assert goal.parse("goal | a | b | c | maybe") is None


def test_the_table_has_one_aligned_row_per_goal() -> None:
    rows = goal.table(
        [goal.Goal("a", "1.00", "<= 1.3", True), goal.Goal("longer name", "12.5 ms", "< 50", False)]
    ).splitlines()
    assert rows == ["a               1.00  <= 1.3  met", "longer name  12.5 ms  < 50    NOT met"]
    assert goal.table([]) == "(no goal was measured)"
