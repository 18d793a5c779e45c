"""Every metric docs/observability.md lists appears on /metrics with plausible values after
a small workload on a real server (a task, a retry, a wait, a failure); every metric the
alert rules and the Grafana dashboard in deploy/ name is one /metrics exposes, and
`promtool check rules` accepts the rules when promtool is installed."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import yaml
from prometheus_client.parser import text_string_to_metric_families

from steplog.settings import Settings
from tests.serving import Running, free_port, running_steplog

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "observability.md"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "steplog.json"
METRIC_NAME = re.compile(r"\bsteplog_[a-z0-9_]+\b")
DOC_ROW = re.compile(r"^\| `(steplog_[a-z0-9_]+)` \| (counter|gauge|histogram) \|", re.M)

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


def documented() -> dict[str, str]:
    """name -> type of every metric in the "## Metrics" section of the doc."""
    text = DOC.read_text()
    section = text.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    found = dict(DOC_ROW.findall(section))
    assert len(found) >= 30, found
    return found


async def scrape(s: Running) -> tuple[Samples, dict[str, str]]:
    """Every sample of /metrics by name and labels, and every family's type by the name
    its samples start with (a counter's family with its _total)."""
    async with s.http.get(s.base_url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: Samples = defaultdict(dict)
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + "_total" if family.type == "counter" else family.name
        types[name] = family.type
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if wanted <= set(k))


def workload(suffix: str) -> dict[str, Any]:
    """A Task, a Task that fails, is retried once after 1 s and caught, a Wait of 1 s."""
    return {
        "StartAt": "Echo",
        "States": {
            "Echo": {"Type": "Task", "Resource": "test:echo", "Next": "Flaky"},
            "Flaky": {
                "Type": "Task",
                "Resource": "test:fail",
                "Parameters": {"error": "Flaky.Error"},
                "Retry": [{"ErrorEquals": ["Flaky.Error"], "IntervalSeconds": 1, "MaxAttempts": 1}],
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Pause", "ResultPath": None}],
                "Next": "Pause",
            },
            "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Pick"},
            "Pick": {
                "Type": "Choice",
                "Choices": [{"Variable": "$.fail", "BooleanEquals": True, "Next": "Broken"}],
                "Default": "Done",
            },
            "Broken": {"Type": "Fail", "Error": "Workload.Failed"},
            "Done": {"Type": "Succeed"},
        },
    }


async def test_every_documented_metric_appears_with_plausible_values(
    settings: Settings, eventually: Any
) -> None:
    docs = documented()
    wf = f"metrics-{secrets.token_hex(4)}"
    async with running_steplog(settings) as s:
        before, _ = await scrape(s)
        await s.register(wf, workload(wf))
        ids = [await s.start_id(wf, {"fail": i == 0}) for i in range(3)]
        ended = [await s.ended(eventually, eid, timeout_s=30) for eid in ids]
        assert sorted(e["status"] for e in ended) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]

        async def counted() -> tuple[Samples, dict[str, str]] | None:
            samples, types = await scrape(s)
            done = value(samples, "steplog_executions_ended_total", workflow=wf)
            return (samples, types) if done == 3 else None

        after, types = await eventually(counted, timeout_s=15, interval_s=0.1)
        _check_deploy_files(set(after))
        await _promtool()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Every documented metric is exposed, with the documented type.
    for name, kind in docs.items():
        assert types.get(name) == kind, (name, kind, types.get(name))
        series = name + "_count" if kind == "histogram" else name
        assert after.get(series), f"{series} has no samples"

    # Executions: 3 started, 2 succeeded, 1 failed (counted once each by the projector).
    assert value(after, "steplog_executions_started_total", workflow=wf) == 3
    assert value(after, "steplog_executions_ended_total", workflow=wf, status="SUCCEEDED") == 2
    assert value(after, "steplog_executions_ended_total", workflow=wf, status="FAILED") == 1
    # Transitions by state type: each execution entered Echo, Flaky, Pause, Pick, then
    # Done or Broken.
    assert delta("steplog_state_transitions_total", state_type="Task") >= 6
    assert delta("steplog_state_transitions_total", state_type="Wait") >= 3
    assert delta("steplog_state_transitions_total", state_type="Choice") >= 3
    assert delta("steplog_state_transitions_total", state_type="Succeed") >= 2
    assert delta("steplog_state_transitions_total", state_type="Fail") >= 1
    # Decisions: start, echo result, flaky x2, retry timer, catch, wait timer... per execution.
    decisions = delta("steplog_decision_duration_seconds_count")
    assert decisions >= 3 * 6
    assert 0 < delta("steplog_decision_duration_seconds_sum") < decisions * 5
    assert delta("steplog_decision_events_sum") >= 3 * 10
    assert delta("steplog_append_duration_seconds_count") >= decisions
    assert delta("steplog_append_conflicts_total") >= 0
    # The relay published every event of the three executions, each a moment after commit.
    published = delta("steplog_relay_published_events_total")
    assert published >= 3 * 12
    assert delta("steplog_relay_lag_seconds_count") == published
    assert delta("steplog_relay_lag_seconds_sum") < published * 5
    # Tasks: 3 echoes succeeded; 6 attempts of test:fail failed, 3 of them retries.
    assert delta("steplog_tasks_total", resource="test:echo", outcome="succeeded") >= 3
    assert delta("steplog_tasks_total", resource="test:fail", outcome="failed") >= 6
    assert delta("steplog_task_retries_total", resource="test:fail") >= 3
    assert delta("steplog_task_duration_seconds_count", resource="test:echo") >= 3
    assert delta("steplog_task_duration_seconds_sum", resource="test:echo") < 3 * 5
    assert delta("steplog_task_heartbeats_missed_total") == 0
    # Timers: 3 retry intervals and 3 waits fired, each at most a few seconds late.
    fired = delta("steplog_timers_fired_total")
    assert fired >= 6
    assert delta("steplog_timer_firing_delay_seconds_count") == fired
    assert delta("steplog_timer_firing_delay_seconds_sum") < fired * 5
    assert value(after, "steplog_timers_pending") >= 0
    assert 0 <= value(after, "steplog_timers_overdue_seconds") < 60
    # Streams of this steplog (its prefix), as last sampled (every 5 s, the first at
    # start): nothing pending, nothing dead-lettered.
    prefix = settings.redis_prefix
    engine = {k: v for k, v in after["steplog_stream_pending_entries"].items() if prefix in str(k)}
    assert len(engine) == settings.partitions + 1, engine  # trigger streams and the task queue
    assert all(v == 0 for v in engine.values())
    for name in ("steplog_stream_lag_entries", "steplog_stream_oldest_pending_age_seconds"):
        ours = [v for k, v in after[name].items() if prefix in str(k)]
        assert len(ours) == settings.partitions + 1 and all(v == 0 for v in ours), (name, ours)
    assert all(v == 0 for k, v in after["steplog_stream_dead_letters"].items() if prefix in str(k))
    # Projections caught up; connections opened; roles up; no PostgreSQL/Redis outage.
    assert value(after, "steplog_projection_lag_events", projection="executions") == 0
    assert value(after, "steplog_postgres_connections_opened_total") >= 2
    assert value(after, "steplog_redis_connections_opened_total") >= 1
    for role in ("engine", "relay", "timers", "worker", "sampler", "projector:executions", "clock"):
        assert value(after, "steplog_role_up", role=role) == 1, role
    # This process's clock and PostgreSQL's are the same machine's.
    assert abs(value(after, "steplog_clock_offset_seconds")) < 1
    assert delta("steplog_postgres_errors_total", kind="unavailable") == 0
    assert delta("steplog_redis_errors_total", kind="unavailable") == 0
    assert delta("steplog_http_requests_total", route="/v1/workflows/{name}/executions") == 3


def _check_deploy_files(exposed: set[str]) -> None:
    """Every metric an alert rule or a dashboard panel names is exposed."""
    rules = yaml.safe_load(ALERTS.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert len(exprs) >= 5
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    names = {n for e in exprs for n in METRIC_NAME.findall(e)}
    assert len(names) >= 20, names
    assert names <= exposed, sorted(names - exposed)


async def _promtool() -> None:
    """`promtool check rules` when promtool is installed (Debian's prometheus package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return  # the metric names were checked above without it
    proc = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "rules",
        str(ALERTS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()
    assert b"SUCCESS" in out


async def test_a_process_without_the_api_serves_metrics_on_its_own_listener(
    settings: Settings, eventually: Any
) -> None:
    port = free_port()
    settings = msgspec.structs.replace(settings, roles=("worker",), metrics_port=port)
    async with running_steplog(settings) as s:
        async with s.http.get(f"http://127.0.0.1:{port}/metrics") as resp:
            status, text = resp.status, await resp.text()
        async with s.http.get(f"http://127.0.0.1:{port}/health/ready") as resp:
            other = resp.status

    assert status == 200
    assert 'steplog_role_up{role="worker"} 1.0' in text
    assert "steplog_tasks_total" in text or "# TYPE steplog_tasks counter" in text
    assert "steplog_http_requests" not in text  # no API in this process
    assert other == 404  # metrics only
