"""STEPLOG_MONITOR_PORT and STEPLOG_METRICS_PORT: off by default, read from the
environment, refused out of range."""

from __future__ import annotations

import pytest

from steplog.settings import Settings


def test_monitor_and_metrics_listener_are_off_by_default() -> None:
    settings = Settings.from_env({})

    assert (settings.monitor_port, settings.metrics_port) == (0, 0)


def test_ports_come_from_the_environment() -> None:
    settings = Settings.from_env({"STEPLOG_MONITOR_PORT": "20101", "STEPLOG_METRICS_PORT": "9100"})

    assert (settings.monitor_port, settings.metrics_port) == (20101, 9100)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STEPLOG_MONITOR_PORT", "65535"),  # its web UI needs the next port
        ("STEPLOG_MONITOR_PORT", "-1"),
        ("STEPLOG_METRICS_PORT", "70000"),
        ("STEPLOG_METRICS_PORT", "x"),
    ],
)
def test_bad_ports_are_refused(variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match="STEPLOG_"):
        Settings.from_env({variable: raw})
