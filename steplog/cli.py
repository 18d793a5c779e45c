"""The ``steplog`` command.

steplog dev                        every role in one process, embedded servers
                                   unless STEPLOG_DATABASE_URL / STEPLOG_REDIS_URL
steplog serve --roles api,engine   chosen roles (any subset of api, engine,
                                   worker, projector, webhooks)
steplog migrate                    apply pending migrations
steplog replay ID [--seq N]        print the state rebuilt from events (at seq N)
steplog projections rebuild NAME   rebuild a read model from PostgreSQL
steplog projections status         each read model's position and lag
steplog verify [--workflow W] [--limit N]
                                   replay histories through the current engine;
                                   exit 1 when any execution's events would differ
steplog export ID [--no-data]      an execution's history as JSON Lines
steplog keys create --namespace NS|--global --role reader|operator|admin [--name TEXT]
                    [--expires RFC3339|DURATION]
                                   a new API key, printed once (only a hash is stored)
steplog keys list [--namespace NS] the keys (never their secrets)
steplog keys revoke ID             revoke a key (refused from then on)
steplog namespaces create NAME     a namespace keys can be bound to
steplog namespaces list            the namespaces
steplog limits show|set|reset NS   a namespace's rate limits and RUNNING quota
steplog webhooks create URL [--event-types T,..] [--statuses S,..] [--workflows W,..]
steplog webhooks list | pause ID | resume ID | delete ID
                                   webhook subscriptions (docs/webhooks.md)
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import errno
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from uuid import UUID

import msgspec

from engine.errors import Unavailable
from steplog import limits_cli, webhooks_cli
from steplog.datadir import DEFAULT_NAME, DataDirError, find_data_dir
from steplog.logs import configure_logging
from steplog.settings import ALL_ROLES, Settings


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (seqs and limits count from 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _execution_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an execution id (a UUID): {text!r}") from None


_SETTINGS_HELP = """\
settings come from STEPLOG_* variables, each listed with its default in docs/settings.md.
Without STEPLOG_DATABASE_URL and STEPLOG_REDIS_URL, commands use the embedded servers of
the data folder: STEPLOG_DATA_DIR, else .steplog in the current directory or its nearest parent
that has one. When a steplog (`make run`) is running on that folder, commands use its
servers; otherwise they start them for the time of the command. Tracing is off unless
OTEL_TRACES_EXPORTER names an exporter (otlp, console): see docs/observability.md."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="steplog",
        description="Event-sourced ASL workflow engine",
        epilog=_SETTINGS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser(
        "dev",
        help="run every role in one process (embedded servers unless URLs are set); "
        "refuses a data folder another steplog runs on",
    )
    serve = sub.add_parser("serve", help="run the given roles")
    serve.add_argument(
        "--roles",
        default=",".join(ALL_ROLES),
        help=f"comma-separated subset of {', '.join(ALL_ROLES)} (default: all)",
    )
    sub.add_parser("migrate", help="apply pending migrations")
    replay = sub.add_parser("replay", help="print an execution's state rebuilt from its events")
    replay.add_argument("execution_id", type=_execution_id, help="the execution's id (a UUID)")
    replay.add_argument(
        "--seq",
        type=_positive_int,
        default=None,
        help="rebuild the state as it was after event SEQ (1 = ExecutionStarted; "
        "default: the last event)",
    )
    proj = sub.add_parser("projections", help="read-model maintenance")
    proj_sub = proj.add_subparsers(dest="action", required=True, metavar="ACTION")
    rebuild = proj_sub.add_parser("rebuild", help="rebuild a projection from PostgreSQL")
    rebuild.add_argument("name", help="the projection (see `steplog projections status`)")
    proj_sub.add_parser("status", help="each projection's position and lag")
    verify = sub.add_parser(
        "verify", help="replay recorded histories through the current engine; 1 when any differ"
    )
    verify.add_argument("--workflow", default=None, help="only executions of this workflow")
    verify.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="check at most LIMIT executions (default: all)",
    )
    export = sub.add_parser("export", help="print an execution's history as JSON Lines")
    export.add_argument("execution_id", type=_execution_id, help="the execution's id (a UUID)")
    export.add_argument("--no-data", action="store_true", help="leave out inputs and outputs")
    _access_parsers(sub)
    limits_cli.add_parser(sub)
    webhooks_cli.add_parser(sub)
    return p


def _expiry(text: str) -> dt.datetime:
    """An argparse type: an RFC 3339 time with an offset, or a duration from now such as
    30d, 12h, 90m."""
    units = {"d": 86400, "h": 3600, "m": 60}
    if text[:-1].isdigit() and text[-1:] in units:
        seconds = int(text[:-1]) * units[text[-1]]
        return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time nor a duration (30d, 12h, 90m): {text!r}"
        ) from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give the time with an offset (Z, +02:00): {text!r}")
    return when


def _access_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke")
    keys_sub = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create a key and print it (shown once)")
    scope = create.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", help="the namespace the key works in")
    scope.add_argument(
        "--global", dest="global_key", action="store_true", help="a global admin key"
    )
    create.add_argument("--role", required=True, choices=("reader", "operator", "admin"))
    create.add_argument("--name", default="", help="a label shown in listings")
    create.add_argument(
        "--expires", type=_expiry, default=None, help="RFC 3339 time or duration (30d, 12h)"
    )
    listing = keys_sub.add_parser("list", help="the keys, without secrets")
    listing.add_argument("--namespace", default=None, help="only this namespace's keys")
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the key's id (the part after slk_)")
    namespaces = sub.add_parser("namespaces", help="namespaces: create, list")
    ns_sub = namespaces.add_subparsers(dest="action", required=True, metavar="ACTION")
    ns_create = ns_sub.add_parser("create", help="create a namespace")
    ns_create.add_argument("name", help="1-64 of A-Z a-z 0-9 _ . -")
    ns_sub.add_parser("list", help="the namespaces")


_SERVER_COMMANDS = ("dev", "serve")


def _with_data_dir(settings: Settings, environ: Mapping[str, str], cwd: Path) -> Settings:
    """Settings whose data folder is found from ``cwd`` unless STEPLOG_DATA_DIR names one."""
    if (environ.get("STEPLOG_DATA_DIR") or "").strip():
        return settings
    found = find_data_dir(cwd)
    return msgspec.structs.replace(settings, data_dir=found or cwd / DEFAULT_NAME)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        print(f"steplog: {exc}", file=sys.stderr)
        return 2
    settings = _with_data_dir(settings, os.environ, Path.cwd())
    embedded = not (settings.database_url and settings.redis_url)
    if embedded and args.command not in _SERVER_COMMANDS and not settings.data_dir.is_dir():
        # A command must not create an empty database somewhere by accident.
        print(
            f"steplog: no data folder at {settings.data_dir} (nor .steplog in a parent); "
            "start steplog with `make run` in the project, or set STEPLOG_DATA_DIR, or "
            "STEPLOG_DATABASE_URL and STEPLOG_REDIS_URL",
            file=sys.stderr,
        )
        return 1
    if args.command in _SERVER_COMMANDS:
        try:
            settings.check_auth()
        except ValueError as exc:
            print(f"steplog: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve":
        roles = tuple(r.strip() for r in args.roles.split(",") if r.strip())
        try:
            settings = msgspec.structs.replace(settings, roles=roles)
        except ValueError as exc:
            print(f"steplog: --roles: {exc}", file=sys.stderr)
            return 2
    level = settings.log_level
    if args.command not in _SERVER_COMMANDS and level.upper() == "INFO":
        # A command prints its result; INFO lines (servers starting, migrations) are noise.
        level = "WARNING"
    configure_logging(settings.log_format, level)
    try:
        import uvloop

        runner: Callable[[Awaitable[int]], int] = uvloop.run  # type: ignore[assignment]
    except ImportError:  # pragma: no cover - uvloop is not on Windows
        runner = asyncio.run  # type: ignore[assignment]
    try:
        return runner(_command(args, settings))
    except DataDirError as exc:
        print(f"steplog: {exc}", file=sys.stderr)
        return 1
    except Unavailable as exc:
        # PostgreSQL or Redis down, read-only, or a statement timed out: no traceback.
        print(f"steplog: {exc}; try again later", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        print(
            f"steplog: cannot listen on {settings.host}:{settings.port}: address already in "
            "use (STEPLOG_PORT chooses another port)",
            file=sys.stderr,
        )
        return 1


async def _command(args: argparse.Namespace, settings: Settings) -> int:
    from steplog import app, audit

    if args.command in ("dev", "serve"):
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await app.serve(settings, stop, own=args.command == "dev")
        return 0
    async with app.server_urls(settings) as (db_url, redis_url):
        async with app.open_resources(
            settings, db_url, redis_url, pool_size=4, serving_api=False
        ) as r:
            if args.command == "migrate":
                return 0  # open_resources applied them
            if args.command == "replay":
                from engine.errors import NotFound

                try:
                    state = await r.queries.state_at(None, args.execution_id, args.seq)
                except NotFound as exc:
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
            if args.command in ("keys", "namespaces"):
                from steplog.access_cli import run_access_command

                return await run_access_command(r.access, args, sys.stdout, sys.stderr)
            if args.command == "export":
                if await audit.export(r, args.execution_id, sys.stdout, not args.no_data):
                    print(f"steplog: no execution {args.execution_id}", file=sys.stderr)
                    return 1
                return 0
            if args.command == "limits":
                return await limits_cli.run(args, r.limits, r.access, sys.stdout)
            if args.command == "webhooks" and r.webhooks is not None:
                return await webhooks_cli.run(
                    args, r.webhooks, r.access, settings.namespace, sys.stdout
                )
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
