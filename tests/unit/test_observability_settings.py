"""STEPLOG_MONITOR_PORT and STEPLOG_METRICS_PORT: off by default, read from the
environment, refused out of range; the clock settings likewise."""

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


def test_clock_settings_come_from_the_environment() -> None:
    assert (Settings().clock_sample_interval_s, Settings().clock_offset_warn_s) == (10.0, 1.0)
    settings = Settings.from_env(
        {"STEPLOG_CLOCK_SAMPLE_INTERVAL_S": "2", "STEPLOG_CLOCK_OFFSET_WARN_S": "0.5"}
    )

    assert (settings.clock_sample_interval_s, settings.clock_offset_warn_s) == (2.0, 0.5)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("STEPLOG_CLOCK_SAMPLE_INTERVAL_S", "0"),
        ("STEPLOG_CLOCK_SAMPLE_INTERVAL_S", "7200"),
        ("STEPLOG_CLOCK_OFFSET_WARN_S", "-1"),
        ("STEPLOG_CLOCK_OFFSET_WARN_S", "soon"),
    ],
)
def test_bad_clock_settings_are_refused(variable: str, raw: str) -> None:
    with pytest.raises(ValueError, match="STEPLOG_"):
        Settings.from_env({variable: raw})


def test_the_repr_of_settings_shows_no_secret() -> None:
    settings = Settings(
        database_url="postgresql://app:pg-secret@db:5432/steplog",
        redis_url="redis://:redis-secret@cache:6379/0",
        metrics_token="metrics-secret",
        http_connections='{"api": {"Headers": {"Authorization": "Bearer conn-secret"}}}',
    )
    shown = repr(settings)
    for secret in ("pg-secret", "redis-secret", "metrics-secret", "conn-secret"):
        assert secret not in shown
    assert "postgresql://app:***@db:5432/steplog" in shown
    assert "redis://:***@cache:6379/0" in shown
    assert "metrics_token='***'" in shown
    assert "partitions=" in shown  # the other fields are still shown
    assert "metrics_token=None" in repr(Settings())
