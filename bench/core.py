"""Transitions per second of the pure core (run by hand: ``python -m bench.core``).

Each workload runs through ``engine.core.inmemory.run_in_memory`` (decide + evolve,
no store, no bus). A *transition* is one recorded event. A trivial one-state
Pass execution is measured in the same run as the baseline, so the figures
can be compared across machines as ratios.

``--profile map`` runs the Map workload under cProfile and prints the top
functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

from engine.core.asl.compile import compile_definition
from engine.core.asl.model import Definition
from engine.core.inmemory import run_in_memory


def pass_chain(n: int = 100) -> dict[str, Any]:
    states: dict[str, Any] = {}
    for i in range(n):
        state: dict[str, Any] = {
            "Type": "Pass",
            "Parameters": {"step": i, "value.$": "$.value", "previous.$": "$.last"},
            "ResultPath": "$.last",
        }
        if i + 1 < n:
            state["Next"] = f"S{i + 1}"
        else:
            state["End"] = True
        states[f"S{i}"] = state
    return {"StartAt": "S0", "States": states}


def choice_loop(limit: int = 1000) -> dict[str, Any]:
    return {
        "StartAt": "Check",
        "States": {
            "Check": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.counter", "NumericLessThan": limit, "Next": "Inc"}],
                "Default": "Done",
            },
            "Inc": {
                "Type": "Pass",
                "Parameters": {"counter.$": "States.MathAdd($.counter, 1)"},
                "Next": "Check",
            },
            "Done": {"Type": "Succeed"},
        },
    }


def map_items() -> dict[str, Any]:
    return {
        "StartAt": "Map",
        "States": {
            "Map": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "Double",
                    "States": {
                        "Double": {
                            "Type": "Pass",
                            "Parameters": {"n.$": "States.MathAdd($.n, $.n)"},
                            "End": True,
                        }
                    },
                },
                "End": True,
            }
        },
    }


TRIVIAL = {"StartAt": "Only", "States": {"Only": {"Type": "Pass", "End": True}}}


def measure(definition: Definition, payload: Any, min_seconds: float = 1.0) -> tuple[float, int]:
    """(transitions per second, transitions per execution), best of repeated runs."""
    runs = 0
    events = 0
    started = time.perf_counter()
    best = float("inf")
    while True:
        t0 = time.perf_counter()
        run = run_in_memory(definition, payload)
        best = min(best, time.perf_counter() - t0)
        assert run.state.status == "SUCCEEDED", (run.state.error, run.state.cause)
        events = len(run.events)
        runs += 1
        if time.perf_counter() - started >= min_seconds and runs >= 3:
            break
    return events / best, events


def workloads(map_size: int) -> dict[str, tuple[dict[str, Any], Any]]:
    return {
        "pass chain (100 states, Parameters + ResultPath)": (
            pass_chain(100),
            {"value": {"a": 1, "b": [1, 2, 3]}, "last": None},
        ),
        "choice loop (States.MathAdd to 1000)": (choice_loop(1000), {"counter": 0}),
        f"map over {map_size} items": (
            map_items(),
            {"items": [{"n": i} for i in range(map_size)]},
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--map-size", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--profile", choices=["map"], default=None)
    args = parser.parse_args()

    if args.profile == "map":
        definition = compile_definition(map_items())
        payload = {"items": [{"n": i} for i in range(args.map_size)]}
        profiler = cProfile.Profile()
        profiler.runcall(run_in_memory, definition, payload)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        return

    base_rate, _ = measure(compile_definition(TRIVIAL), {"x": 1}, args.seconds)
    print(f"{'baseline: 1-state Pass execution':50} {base_rate:12,.0f} transitions/s")
    run: Callable[[dict[str, Any], Any], tuple[float, int]] = lambda d, p: measure(  # noqa: E731
        compile_definition(d), p, args.seconds
    )
    for label, (doc, payload) in workloads(args.map_size).items():
        rate, events = run(doc, payload)
        print(
            f"{label:50} {rate:12,.0f} transitions/s  "
            f"({events} events, {rate / base_rate:.2f}x baseline)"
        )


if __name__ == "__main__":
    main()
