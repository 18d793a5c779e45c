from __future__ import annotations

import pytest


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    from tests.conformance.test_conformance import RESULTS

    if not RESULTS:
        return
    terminalreporter.section("ASL conformance pass rate per group")
    total = passed = 0
    for group in sorted(RESULTS):
        ok = sum(RESULTS[group])
        n = len(RESULTS[group])
        total += n
        passed += ok
        terminalreporter.write_line(f"{group:24} {ok:4}/{n:<4} {100 * ok / n:5.1f}%")
    terminalreporter.write_line(f"{'total':24} {passed:4}/{total:<4} {100 * passed / total:5.1f}%")
