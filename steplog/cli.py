"""The ``steplog`` command.

steplog dev                        every role in one process, embedded servers
                                   unless STEPLOG_DATABASE_URL / STEPLOG_REDIS_URL
steplog serve --roles api,engine   chosen roles (any subset of api, engine,
                                   worker, projector)
steplog migrate                    apply pending migrations
steplog replay ID [--seq N]        print the state rebuilt from events (at seq N)
steplog projections rebuild NAME   rebuild a read model from PostgreSQL
steplog projections status         each read model's position and lag
steplog verify [--workflow W] [--limit N]
                                   replay histories through the current engine;
                                   exit 1 when any execution's events would differ
steplog export ID [--no-data]      an execution's history as JSON Lines
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from uuid import UUID

import msgspec

from steplog.logs import configure_logging
from steplog.settings import ALL_ROLES, Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="steplog", description="Event-sourced ASL workflow engine")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("dev", help="run every role in one process (embedded servers by default)")
    serve = sub.add_parser("serve", help="run the given roles")
    serve.add_argument("--roles", default=",".join(ALL_ROLES), help="comma-separated roles")
    sub.add_parser("migrate", help="apply pending migrations")
    replay = sub.add_parser("replay", help="print an execution's state rebuilt from its events")
    replay.add_argument("execution_id")
    replay.add_argument("--seq", type=int, default=None)
    proj = sub.add_parser("projections", help="read-model maintenance")
    proj_sub = proj.add_subparsers(dest="action", required=True)
    rebuild = proj_sub.add_parser("rebuild", help="rebuild a projection from PostgreSQL")
    rebuild.add_argument("name")
    proj_sub.add_parser("status", help="each projection's position and lag")
    verify = sub.add_parser(
        "verify", help="replay recorded histories through the current engine; 1 when any differ"
    )
    verify.add_argument("--workflow", default=None)
    verify.add_argument("--limit", type=int, default=None)
    export = sub.add_parser("export", help="print an execution's history as JSON Lines")
    export.add_argument("execution_id")
    export.add_argument("--no-data", action="store_true", help="leave out inputs and outputs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        print(f"steplog: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
        settings = msgspec.structs.replace(settings, roles=roles)
    configure_logging(settings.log_format, settings.log_level)
    try:
        import uvloop

        runner: Callable[[Awaitable[int]], int] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        runner = asyncio.run  # type: ignore[assignment]
    return runner(_command(args, settings))


async def _command(args: argparse.Namespace, settings: Settings) -> int:
    from steplog import app, audit

    if args.command in ("dev", "serve"):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await app.serve(settings, stop)
        return 0
    async with app.server_urls(settings) as (db_url, redis_url):
        async with app.open_resources(settings, db_url, redis_url, pool_size=4) as r:
            if args.command == "migrate":
                return 0  # open_resources applied them
            if args.command == "replay":
                from engine.errors import NotFound

                try:
                    state = await r.queries.state_at(UUID(args.execution_id), args.seq)
                except (ValueError, NotFound) as exc:
                    print(f"steplog: {exc}", file=sys.stderr)
                    return 1
                sys.stdout.write(msgspec.json.format(msgspec.json.encode(state)).decode() + "\n")
                return 0
            if args.command == "projections" and args.action == "rebuild":
                from projections.runner import rebuild

                try:
                    count = await rebuild(r.pool, args.name)
                except ValueError as exc:
                    print(f"steplog: {exc}", file=sys.stderr)
                    return 2
                print(f"rebuilt {args.name} from {count} events")
                return 0
            if args.command == "projections" and args.action == "status":
                return await audit.status(r, sys.stdout)
            if args.command == "verify":
                report = await audit.verify(r, sys.stdout, workflow=args.workflow, limit=args.limit)
                return report.exit_code
            if args.command == "export":
                try:
                    eid = UUID(args.execution_id)
                except ValueError:
                    eid = None
                if eid is None or await audit.export(r, eid, sys.stdout, not args.no_data):
                    print(f"steplog: no execution {args.execution_id}", file=sys.stderr)
                    return 1
                return 0
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
