"""The steplog command against real servers: migrate, replay."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path

from engine.adapters.store import EventStore
from engine.service import EngineService
from steplog.settings import Settings

STEPLOG = str(Path(sys.executable).with_name("steplog"))
PASS = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": 1, "End": True}}}


async def _steplog(settings: Settings, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "STEPLOG_DATABASE_URL": str(settings.database_url),
        "STEPLOG_REDIS_URL": str(settings.redis_url),
        "STEPLOG_REDIS_PREFIX": settings.redis_prefix,
    }
    proc = await asyncio.create_subprocess_exec(
        STEPLOG, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_replay_prints_the_state_at_a_seq(store: EventStore, settings: Settings) -> None:
    service = EngineService(store)
    await service.register("default", "p", PASS)
    record, *_ = await service.start("default", "p", {"x": 1}, "run-1", dt.datetime.now(dt.UTC))
    code, out, err = await _steplog(settings, "replay", str(record.execution_id), "--seq", "1")
    assert code == 0, err
    state = json.loads(out)
    assert state["seq"] == 1
    assert state["status"] == "RUNNING"
    assert state["input"] == {"x": 1}


async def test_replay_of_an_unknown_execution_exits_1(settings: Settings) -> None:
    code, _, err = await _steplog(settings, "replay", "00000000-0000-4000-8000-000000000001")
    assert code == 1
    assert "not found" in err


async def test_migrate_is_idempotent(settings: Settings) -> None:
    code, _, err = await _steplog(settings, "migrate")
    assert code == 0, err
