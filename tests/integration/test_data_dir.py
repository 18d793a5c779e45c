"""The steplog command beside a running `steplog dev`: commands use its embedded servers
instead of starting a second pair over its files, a second `dev` refuses with one line,
and a command run outside any project says where it looked instead of creating a folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

STEPLOG = str(Path(sys.executable).with_name("steplog"))
PASS = {"StartAt": "A", "States": {"A": {"Type": "Pass", "Result": 1, "End": True}}}


def _env(**extra: str) -> dict[str, str]:
    """The environment without any STEPLOG_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEPLOG_")}
    return {**env, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _run(cwd: Path, *args: str, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        STEPLOG,
        *args,
        cwd=cwd,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _text(path: Path) -> str:
    return path.read_text(errors="replace")


async def _eventually_ready(
    http: aiohttp.ClientSession, base: str, proc: asyncio.subprocess.Process, log: Path
) -> None:
    # A first start runs initdb: generous on a loaded machine, and fast to fail when the
    # process has died (with what it logged).
    deadline = asyncio.get_running_loop().time() + 240
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"steplog dev exited {proc.returncode}:\n{_text(log)}")
        try:
            async with http.get(f"{base}/health/ready") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"steplog dev did not become ready:\n{_text(log)}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def dev() -> AsyncIterator[tuple[Path, str]]:
    """A real `steplog dev` process owning ``<project>/.steplog``; yields (project, base URL).

    The project is not under pytest's tmp_path: PostgreSQL runs as another user there,
    and every pytest session on the machine resets its base folder to mode 0700."""
    tmp_path = Path(tempfile.mkdtemp(prefix="steplog-dev-"))
    port = _free_port()
    log = tmp_path / "dev.log"
    with open(log, "wb") as sink:  # noqa: ASYNC230 - a file handed to the child process
        proc = await asyncio.create_subprocess_exec(
            STEPLOG,
            "dev",
            cwd=tmp_path,
            env=_env(STEPLOG_PORT=str(port)),
            stdout=sink,
            stderr=sink,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await _eventually_ready(http, base, proc, log)
        yield tmp_path, base
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 60)
        await asyncio.to_thread(shutil.rmtree, tmp_path, ignore_errors=True)
        assert code == 0


async def _runs_a_workflow(base: str, project: Path) -> None:
    """As the README tour: with the admin key `steplog dev` keeps in .steplog/admin.key."""
    key = (project / ".steplog" / "admin.key").read_text().strip()
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.put(f"{base}/v1/workflows/p", json={"definition": PASS}) as resp:
            assert resp.status in (200, 201), await resp.text()
        async with http.post(f"{base}/v1/workflows/p/executions", json={"input": {}}) as resp:
            assert resp.status in (200, 201), await resp.text()
            eid = (await resp.json())["execution_id"]
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            async with http.get(f"{base}/v1/executions/{eid}") as resp:
                if (await resp.json())["status"] == "SUCCEEDED":
                    return
            assert asyncio.get_running_loop().time() < deadline, "execution did not end"
            await asyncio.sleep(0.1)


@pytest.mark.timeout(360)
async def test_commands_use_the_running_servers_and_leave_them_working(
    dev: tuple[Path, str],
) -> None:
    project, base = dev
    inside = project / "sub" / "dir"  # dev.log sits in project, beside .steplog
    os.makedirs(inside)
    # From a folder inside the project: the data folder is found in a parent.
    code, out, err = await _run(inside, "projections", "status")
    assert code == 0, err
    assert out.startswith("projection")
    code, _, err = await _run(project, "replay", str(uuid.uuid4()))
    assert code == 1
    assert "not found" in err
    # Before this fix, the command's own redis-server unlinked the running one's socket.
    await _runs_a_workflow(base, project)


@pytest.mark.timeout(360)
async def test_a_second_dev_on_the_same_folder_refuses_in_one_line(
    dev: tuple[Path, str],
) -> None:
    project, base = dev
    code, _, err = await _run(project, "dev", STEPLOG_PORT=str(_free_port()))
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "is in use by steplog (pid" in lines[0]
    await _runs_a_workflow(base, project)


async def test_a_command_outside_a_project_creates_nothing(tmp_path: Path) -> None:
    code, _, err = await _run(tmp_path, "replay", str(uuid.uuid4()))
    assert code == 1
    assert str(tmp_path / ".steplog") in err
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "args",
    [
        ("replay", "00000000-0000-4000-8000-000000000001", "--seq", "0"),
        ("replay", "00000000-0000-4000-8000-000000000001", "--seq", "x"),
        ("replay", "not-a-uuid"),
        ("verify", "--limit", "-5"),
        ("export", "nope"),
        ("serve", "--roles", "api,bogus"),
    ],
)
async def test_bad_arguments_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    os.mkdir(tmp_path / ".steplog")
    code, _, err = await _run(tmp_path, *args)
    assert code == 2, err
    assert "Traceback" not in err
    assert not os.listdir(tmp_path / ".steplog")


async def test_dev_keeps_authentication_on_with_an_admin_key_in_a_private_file(
    dev: tuple[Path, str],
) -> None:
    """Issue 10, item 4: `make run` creates an admin key on first start, stores it with
    mode 0600, and the API refuses requests without it."""
    project, base = dev
    key_file = project / ".steplog" / "admin.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key.startswith("slk_")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/v1/workflows") as resp:
            assert resp.status == 401
            assert key not in await resp.text()
        headers = {"Authorization": f"Bearer {key}"}
        async with http.get(f"{base}/v1/keys", headers=headers) as resp:
            assert resp.status == 200
            listed = await resp.json()
    assert [k["role"] for k in listed["keys"]] == ["admin"]
    assert listed["keys"][0]["namespace"] is None
    assert key not in str(listed)  # the secret is never listed
    # The CLI beside the running server sees the same key.
    code, out, err = await _run(project, "keys", "list")
    assert code == 0, err
    assert key.split("_")[1] in out
    assert key.split("_")[2] not in out


async def test_serve_refuses_auth_off_on_a_non_loopback_address(tmp_path: Path) -> None:
    code, _, err = await _run(tmp_path, "serve", STEPLOG_AUTH="off", STEPLOG_HOST="0.0.0.0")
    assert code == 2
    assert err.count("\n") == 1
    assert "STEPLOG_AUTH=off is allowed only on a loopback address" in err
    assert not (tmp_path / ".steplog").exists()


ECHO = {"StartAt": "T", "States": {"T": {"Type": "Task", "Resource": "test:echo", "End": True}}}


@pytest.mark.timeout(360)
async def test_the_background_roles_run_in_a_second_process_beside_dev() -> None:
    """docs/scaling.md, "Two processes on one machine": `STEPLOG_ROLES=api,engine make
    run`, then `steplog serve --roles worker,projector,webhooks` in the project. The
    second process finds the running servers through the data folder; a Task started
    before it came waits for it, then both ends show in the read model it keeps."""
    project = Path(tempfile.mkdtemp(prefix="steplog-dev-"))
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    procs: list[asyncio.subprocess.Process] = []
    try:
        with open(project / "dev.log", "wb") as sink:  # noqa: ASYNC230 - the child's
            procs.append(
                await asyncio.create_subprocess_exec(
                    STEPLOG,
                    "dev",
                    cwd=project,
                    env=_env(STEPLOG_PORT=str(port), STEPLOG_ROLES="api,engine"),
                    stdout=sink,
                    stderr=sink,
                )
            )
        async with aiohttp.ClientSession() as http:
            await _eventually_ready(http, base, procs[0], project / "dev.log")
        key = (project / ".steplog" / "admin.key").read_text().strip()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.put(f"{base}/v1/workflows/echo", json={"definition": ECHO}) as resp:
                assert resp.status in (200, 201), await resp.text()

            async def start(n: int) -> str:
                async with http.post(
                    f"{base}/v1/workflows/echo/executions", json={"input": {"n": n}}
                ) as resp:
                    assert resp.status == 201, await resp.text()
                    return str((await resp.json())["execution_id"])

            early = await start(1)
            await asyncio.sleep(1.0)
            async with http.get(f"{base}/v1/executions/{early}") as resp:
                assert (await resp.json())["status"] == "RUNNING"  # no worker yet
            with open(project / "serve.log", "wb") as sink:  # noqa: ASYNC230 - the child's
                procs.append(
                    await asyncio.create_subprocess_exec(
                        STEPLOG,
                        "serve",
                        "--roles",
                        "worker,projector,webhooks",
                        cwd=project / ".steplog",  # (any folder of the project)
                        env=_env(STEPLOG_PORT=str(_free_port())),
                        stdout=sink,
                        stderr=sink,
                    )
                )
            later = await start(2)
            deadline = asyncio.get_running_loop().time() + 60
            while True:
                async with http.get(
                    f"{base}/v1/executions", params={"workflow": "echo", "status": "SUCCEEDED"}
                ) as resp:
                    listed = {e["execution_id"]: e for e in (await resp.json())["executions"]}
                if {early, later} <= set(listed):
                    break
                assert procs[1].returncode is None, _text(project / "serve.log")
                assert asyncio.get_running_loop().time() < deadline, _text(project / "serve.log")
                await asyncio.sleep(0.2)
            async with http.get(f"{base}/v1/executions/{later}") as resp:
                assert (await resp.json())["output"] == {"n": 2}
    finally:
        # The second process first, then the one whose embedded servers it uses (stopped
        # together, the second could lose PostgreSQL while it still saves its place,
        # and exit 1 for it).
        codes = []
        for proc in reversed(procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            codes.append(await asyncio.wait_for(proc.wait(), 60))
        logged = _text(project / "serve.log") if (project / "serve.log").exists() else ""
        await asyncio.to_thread(shutil.rmtree, project, ignore_errors=True)
    assert codes == [0] * len(procs), logged
