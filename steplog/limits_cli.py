"""``steplog limits``: show, set and reset a namespace's rate limits and RUNNING quota
(stored in PostgreSQL, migration 0007; every API process applies a change within
STEPLOG_LIMITS_CACHE_S seconds, 5 by default, without a restart)."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from engine.access import Access, Actor
from engine.limits import BUDGETS, Limits, bucket_limit


def rate_and_burst(text: str) -> tuple[float, int]:
    """An argparse type: ``RATE/BURST`` (tokens per second / bucket size)."""
    rate, slash, burst = text.partition("/")
    try:
        if not slash:
            raise ValueError("expected RATE/BURST, e.g. 100/200")
        limit = bucket_limit(float(rate), int(burst))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return limit.rate_per_s, limit.burst


def _running(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= 2**31 - 1:
        raise argparse.ArgumentTypeError("must be 0 (no quota) to 2147483647")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    limits = sub.add_parser(
        "limits",
        help="a namespace's rate limits and RUNNING quota",
        description=__doc__,
    )
    actions = limits.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the limits in force for a namespace")
    show.add_argument("namespace")
    reset = actions.add_parser("reset", help="drop a namespace's overrides (back to defaults)")
    reset.add_argument("namespace")
    set_ = actions.add_parser(
        "set",
        help="override some of a namespace's limits",
        description="Override a namespace's limits; what is not given keeps its value. "
        "RATE/BURST: RATE tokens per second refill a bucket of BURST tokens.",
    )
    set_.add_argument("namespace")
    for budget in BUDGETS:
        set_.add_argument(
            f"--{budget}",
            type=rate_and_burst,
            metavar="RATE/BURST",
            help=f"the namespace's shared {budget} bucket",
        )
        set_.add_argument(
            f"--key-{budget}",
            type=rate_and_burst,
            metavar="RATE/BURST",
            help=f"each API key's own {budget} bucket in the namespace",
        )
    set_.add_argument("--running", type=_running, metavar="N", help="the RUNNING quota (0: none)")


async def run(args: argparse.Namespace, limits: Limits, access: Access, out: TextIO) -> int:
    """Carry out ``steplog limits ACTION``; the exit code. A change is audited (as any
    command-line action: no key, remote "steplog cli") right after it is stored."""
    namespace: str = args.namespace
    if args.action == "set":
        changed = 0
        for budget in BUDGETS:
            for scope, value in (
                ("namespace", getattr(args, budget)),
                ("key", getattr(args, f"key_{budget}")),
            ):
                if value is not None:
                    await limits.set_rate(namespace, budget, scope, *value)
                    changed += 1
        if args.running is not None:
            await limits.set_running_max(namespace, args.running)
            changed += 1
        if not changed:
            print("steplog: limits set: nothing to set (see --help)", file=sys.stderr)
            return 2
    elif args.action == "reset":
        await limits.reset(namespace)
    if args.action in ("set", "reset"):
        asked = {
            k: v for k, v in vars(args).items() if k not in ("command", "action") and v is not None
        }
        actor = Actor(key_id=None, namespace=namespace, remote="steplog cli")
        await access.record(actor, f"limits.{args.action}", namespace, asked)
    effective = await limits.of(namespace)
    print(f"namespace {namespace}", file=out)
    for budget in BUDGETS:
        ns, key = effective.namespace[budget], effective.key[budget]
        print(
            f"  {budget:<7} namespace {ns.rate_per_s:g}/s burst {ns.burst}; "
            f"per key {key.rate_per_s:g}/s burst {key.burst}",
            file=out,
        )
    quota = effective.running_max
    print(f"  running quota {quota if quota else 'none'}", file=out)
    return 0
