"""CPU time and memory of processes, read from /proc (Linux), for the benchmarks.

A server is a tree of processes whose children come and go (PostgreSQL starts a backend
per connection), so its CPU time is its root's own time plus its children's: those still
running (their /proc/<pid>/stat) and those already ended and waited for (the root's
``cutime``/``cstime``). The difference of two readings is the CPU spent in between.

    python bench/procstat.py PID...     # CPU-seconds and RSS of each process tree
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Stat:
    """The fields of /proc/<pid>/stat the benchmarks use (times in seconds)."""

    pid: int
    ppid: int
    user_s: float
    system_s: float
    children_user_s: float  # ended children, waited for
    children_system_s: float
    rss_bytes: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s

    @property
    def ended_children_cpu_s(self) -> float:
        return self.children_user_s + self.children_system_s


def parse_stat(text: str) -> Stat:
    """One /proc/<pid>/stat line. The command name (field 2) is in parentheses and may
    itself hold spaces and parentheses, so fields are counted after its last ')'."""
    pid = int(text[: text.index(" ")])
    rest = text[text.rindex(")") + 2 :].split()
    # rest[0] is field 3 (state): field n is rest[n - 3].
    return Stat(
        pid=pid,
        ppid=int(rest[1]),
        user_s=int(rest[11]) / TICKS,
        system_s=int(rest[12]) / TICKS,
        children_user_s=int(rest[13]) / TICKS,
        children_system_s=int(rest[14]) / TICKS,
        rss_bytes=int(rest[21]) * PAGE,
    )


def stat(pid: int) -> Stat | None:
    """The process's stat, None when it has ended."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_stats() -> list[Stat]:
    out = []
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (s := stat(int(entry.name))) is not None:
            out.append(s)
    return out


def descendants(root: int, stats: list[Stat]) -> list[Stat]:
    """The processes below ``root`` (children, grandchildren, ...) among ``stats``."""
    below: dict[int, list[Stat]] = {}
    for s in stats:
        below.setdefault(s.ppid, []).append(s)
    out, todo = [], [root]
    while todo:
        for child in below.get(todo.pop(), []):
            out.append(child)
            todo.append(child.pid)
    return out


def tree_cpu_s(root: int, stats: list[Stat] | None = None) -> float:
    """CPU-seconds of ``root`` and every process below it, running or ended (0 when
    ``root`` has ended)."""
    stats = all_stats() if stats is None else stats
    top = next((s for s in stats if s.pid == root), None)
    if top is None:
        return 0.0
    total = top.cpu_s + top.ended_children_cpu_s
    for s in descendants(root, stats):
        total += s.cpu_s
    return total


def tree_rss_bytes(root: int, stats: list[Stat] | None = None) -> int:
    """Resident memory of ``root`` and the processes below it (shared pages counted in
    each, so an upper bound)."""
    stats = all_stats() if stats is None else stats
    return sum(s.rss_bytes for s in stats if s.pid == root) + sum(
        s.rss_bytes for s in descendants(root, stats)
    )


def postgres_root(backend_pid: int) -> int:
    """The postmaster of a backend (``SELECT pg_backend_pid()``): its parent."""
    s = stat(backend_pid)
    if s is None:
        raise ProcessLookupError(backend_pid)
    return s.ppid


if __name__ == "__main__":
    snapshot = all_stats()
    for arg in sys.argv[1:]:
        pid = int(arg)
        print(
            f"{pid}: {tree_cpu_s(pid, snapshot):.2f} CPU-s, "
            f"{tree_rss_bytes(pid, snapshot) / 2**20:.1f} MiB RSS (with children)"
        )
