"""Every goal of issue 13 from one run: what `make bench` (and `make bench-all`) run.

Runs, one after the other (each on servers of its own, started and stopped by it),
printing their reports as they come, then one table of every goal line they printed
(bench/goal.py), the time taken and the load average:

1. bench/transitions.py --ceiling -n 2000: the write-path and POST + INSERT ceilings,
   then pass1, pass10 and task3 through the API, and pass1 starts offered open-loop at
   half of the closed-loop rate (arguments not known here are passed to it, e.g.
   ``-n 4000`` or ``--rounds 3``); 2,000 executions of each, as 400 (a quarter of a second
   of pass1) swung by a third between runs; then the same with ``--split`` (steplog as
   two processes: api and engine, then worker, projector and webhooks), without the
   open loop;
2. bench/replay.py: one 10,000-event execution replayed / bare fetch + decode;
3. bench/projection_lag.py: commit -> read model visible at 5,000 events/s;
4. bench/waits.py: RSS under load, idle CPU of executions waiting in a Wait state, and
   their timers after SIGKILL + restart: ``--waits`` executions (10,000 by default,
   with 30 s idle readings; ``--full``: 100,000 and 60 s, as the issue states it).

With ``--full`` (`make bench-all`) it also runs bench/scale.py (1, 2, 3 processes of
each role: CPU, conflicts, duplicates and idle waits per 1,000 transitions; 2 rounds in
alternating order, medians) and
bench/partitioning.py (the events table hash-partitioned against the plain table).

Durations on the 2-core machine: about 6 minutes (measured at load 4-8); with ``--full`` about 20-40.

    .venv/bin/python bench/goals.py [--full] [--waits N] [transitions.py options]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import goal  # bench/goal.py

HERE = Path(__file__).resolve().parent


def run(script: str, *args: str) -> list[goal.Goal]:
    """Run ``bench/<script>`` with ``args``, echoing its output; the goals it printed."""
    print(f"\n=== bench/{script} {' '.join(args)}", flush=True)
    found: list[goal.Goal] = []
    with subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for text in proc.stdout:
            print(text, end="", flush=True)
            if (g := goal.parse(text.rstrip("\n"))) is not None:
                found.append(g)
    if proc.returncode != 0:
        found.append(goal.Goal(f"bench/{script}", f"exit {proc.returncode}", "runs", False))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--full", action="store_true", help="100,000 waits, scale, partitioning")
    parser.add_argument("--waits", type=int, default=0, help="executions of bench/waits.py")
    args, transitions_args = parser.parse_known_args()
    waits = args.waits or (100_000 if args.full else 10_000)
    idle = "60" if args.full else "30"
    began = time.monotonic()
    speed_before = goal.python_speed()
    goals = run("transitions.py", "--ceiling", "-n", "2000", *transitions_args)
    # The same in the two-process layout (bench/transitions.py --split), beside it.
    goals += run(
        "transitions.py", "--ceiling", "-n", "2000", "--split", "--open-seconds", "0",
        *transitions_args,
    )  # fmt: skip
    goals += run("replay.py")
    goals += run("projection_lag.py")
    goals += run("waits.py", "--executions", str(waits), "--idle-seconds", idle)
    if args.full:
        goals += run("scale.py", "--rounds", "2")
        goals += run("partitioning.py")
    minutes = (time.monotonic() - began) / 60
    print(f"\n=== issue 13 goals, one run ({minutes:.0f} min)")
    print(goal.table(goals))
    print(f"met: {sum(g.met for g in goals)} of {len(goals)}")
    print(
        f"Python speed (a plain loop, M iterations/s): {speed_before:.1f} before, "
        f"{goal.python_speed():.1f} after (absolute figures move with it between machines)"
    )
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
