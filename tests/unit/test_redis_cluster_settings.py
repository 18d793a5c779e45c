"""STEPLOG_REDIS_CLUSTER: read from the environment, and only with a Redis URL."""

from __future__ import annotations

import pytest

from steplog.settings import Settings


def test_redis_cluster_is_read_from_the_environment() -> None:
    url = "redis://10.0.0.11:6379/0"
    assert Settings.from_env({"STEPLOG_REDIS_URL": url}).redis_cluster is False
    for on in ("true", "TRUE", "1"):
        env = {"STEPLOG_REDIS_URL": url, "STEPLOG_REDIS_CLUSTER": on}
        assert Settings.from_env(env).redis_cluster is True
    env = {"STEPLOG_REDIS_URL": url, "STEPLOG_REDIS_CLUSTER": "false"}
    assert Settings.from_env(env).redis_cluster is False
    with pytest.raises(ValueError, match="STEPLOG_REDIS_CLUSTER"):
        Settings.from_env({"STEPLOG_REDIS_URL": url, "STEPLOG_REDIS_CLUSTER": "yes please"})


def test_redis_cluster_needs_a_redis_url() -> None:
    """An embedded Redis is one server: a cluster must be named."""
    with pytest.raises(ValueError, match="redis_cluster needs redis_url"):
        Settings.from_env({"STEPLOG_REDIS_CLUSTER": "true"})
