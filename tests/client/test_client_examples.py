"""examples/client_tour.py, run as a program against a whole steplog with
authentication on, its key and URL from the environment as the README says."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import msgspec

from steplog.settings import Settings
from tests.serving import running_steplog

EXAMPLES = Path(__file__).parents[2] / "examples"


async def test_the_client_tour_runs_to_its_end(settings: Settings) -> None:
    async with running_steplog(msgspec.structs.replace(settings, auth=True)) as app:
        assert app.key
        env = {**os.environ, "STEPLOG_URL": app.base_url, "STEPLOG_API_KEY": app.key}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "client_tour.py"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "registered order version 1" in text
    assert "same name, other input: 409 execution_name_conflict" in text
    assert "order-o-1 SUCCEEDED {'order_id': 'o-1', 'status': 'APPROVED'}" in text
    assert " FAILED None OrderRejected" in text
    assert text.rstrip().endswith("ExecutionSucceeded")  # the live feed ran to the end
    assert "WaitStateEntered" in text.split("live feed of")[1]
