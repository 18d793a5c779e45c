"""The goal lines every benchmark prints, and their reading by bench/goals.py.

A goal line is ``goal | <name> | <figure> | <target> | met`` (or ``NOT met``): one per
goal of issue 13 a benchmark measures, printed after its own report, so that
`make bench` can gather every goal of one run into one table.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

PREFIX = "goal | "


@dataclass(frozen=True)
class Goal:
    name: str
    figure: str
    target: str
    met: bool


def line(goal: Goal) -> str:
    return (
        f"{PREFIX}{goal.name} | {goal.figure} | {goal.target} | {'met' if goal.met else 'NOT met'}"
    )


def report(name: str, figure: str, target: str, met: bool) -> None:
    """Print the goal line of ``name``."""
    print(line(Goal(name, figure, target, met)), flush=True)


def parse(text: str) -> Goal | None:
    """The goal a printed line states, None for any other line."""
    if not text.startswith(PREFIX):
        return None
    parts = [p.strip() for p in text[len(PREFIX) :].split(" | ")]
    if len(parts) != 4 or parts[3] not in ("met", "NOT met"):
        return None
    return Goal(parts[0], parts[1], parts[2], parts[3] == "met")


def python_speed() -> float:
    """Millions of iterations/s of a plain Python loop (median of 5): how fast this
    machine runs Python now. The ratios of a run hold across machines; its absolute
    figures (task round trips/s) move with this."""

    def once() -> float:
        began = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        return 2.0 / (time.perf_counter() - began)

    return statistics.median(once() for _ in range(5))


def table(goals: list[Goal]) -> str:
    """The goals as an aligned table, one per line."""
    if not goals:
        return "(no goal was measured)"
    widths = [max(len(g.name) for g in goals), max(len(g.figure) for g in goals)]
    widths.append(max(len(g.target) for g in goals))
    return "\n".join(
        f"{g.name:<{widths[0]}}  {g.figure:>{widths[1]}}  {g.target:<{widths[2]}}  "
        f"{'met' if g.met else 'NOT met'}"
        for g in goals
    )


# The steplog a bench starts measures capacity, not the rate limits that protect a
# deployment (500 starts/s per namespace by default, which a faster engine now reaches):
# its environment lifts them.
_NO_LIMIT = "starts=1000000/1000000,writes=1000000/1000000,reads=1000000/1000000"
UNLIMITED = {"STEPLOG_RATE_LIMITS": _NO_LIMIT, "STEPLOG_KEY_RATE_LIMITS": _NO_LIMIT}
