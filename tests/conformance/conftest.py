from __future__ import annotations

import pytest


def _section(terminalreporter: pytest.TerminalReporter, title: str, results: dict) -> None:
    terminalreporter.section(title)
    total = passed = 0
    for group in sorted(results):
        ok = sum(results[group])
        n = len(results[group])
        total += n
        passed += ok
        terminalreporter.write_line(f"{group:24} {ok:4}/{n:<4} {100 * ok / n:5.1f}%")
    terminalreporter.write_line(f"{'total':24} {passed:4}/{total:<4} {100 * passed / total:5.1f}%")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.conformance.test_conformance import RESULTS
    from tests.conformance.test_stack import RESULTS as STACK_RESULTS
    from tests.conformance.test_stack import STACK_TIMING

    if RESULTS:
        _section(terminalreporter, "ASL conformance pass rate per group", RESULTS)
    if STACK_RESULTS:
        _section(
            terminalreporter,
            "ASL conformance through the whole stack (API, PostgreSQL, Redis, engine, worker)",
            STACK_RESULTS,
        )
        terminalreporter.write_line(
            f"every case through the stack in {STACK_TIMING['seconds']:.1f} s "
            f"({STACK_TIMING['cases']:.0f} executions)"
        )
