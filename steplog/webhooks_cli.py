"""``steplog webhooks``: create, list, pause, resume, rotate the secret of and delete a
namespace's webhook subscriptions (docs/webhooks.md); the same as /v1/webhooks. Each
change is audited (no key, remote "steplog cli") right after it is stored."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO
from uuid import UUID

from engine.access import Access, Actor
from engine.core.timestamps import iso_millis
from engine.errors import SteplogError
from engine.webhooks import STATUSES, Subscription, Webhooks


def _webhook_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a webhook id (a UUID): {text!r}") from None


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    webhooks = sub.add_parser(
        "webhooks",
        help="webhook subscriptions: create, list, pause, resume, rotate-secret, delete",
    )
    actions = webhooks.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="subscribe a URL (the signing secret is printed once)",
        description="Subscribe URL to the namespace's events. Without --event-types and "
        "--statuses every event is delivered.",
    )
    create.add_argument("url", help="http(s) URL the events are POSTed to")
    create.add_argument("--namespace", default=None, help="default: STEPLOG_NAMESPACE")
    create.add_argument("--secret", default=None, help="whsec_<base64> (default: generated)")
    create.add_argument("--description", default="")
    create.add_argument(
        "--event-types",
        type=_names,
        default=[],
        metavar="T1,T2",
        help="history event types, e.g. TaskFailed,ExecutionSucceeded",
    )
    create.add_argument(
        "--statuses",
        type=_names,
        default=[],
        metavar="S1,S2",
        help=f"execution status changes: any of {','.join(STATUSES)}",
    )
    create.add_argument(
        "--workflows", type=_names, default=[], metavar="W1,W2", help="only these workflows"
    )
    create.add_argument("--paused", action="store_true", help="create it paused")
    listing = actions.add_parser("list", help="the namespace's subscriptions")
    listing.add_argument("--namespace", default=None, help="default: STEPLOG_NAMESPACE")
    for action, text in (
        ("pause", "pause deliveries (they resume from where they stopped)"),
        ("resume", "resume a paused subscription"),
        ("delete", "delete a subscription and its deliveries"),
    ):
        one = actions.add_parser(action, help=text)
        one.add_argument("webhook_id", type=_webhook_id)
        one.add_argument("--namespace", default=None, help="default: STEPLOG_NAMESPACE")
    rotate = actions.add_parser(
        "rotate-secret",
        help="replace the signing secret (the new one is printed once)",
        description="Sign with a new secret from now on. The replaced secret keeps signing "
        "alongside (two signatures in webhook-signature) for STEPLOG_WEBHOOK_SECRET_OVERLAP_S "
        "seconds, so receivers can switch without losing a delivery.",
    )
    rotate.add_argument("webhook_id", type=_webhook_id)
    rotate.add_argument("--namespace", default=None, help="default: STEPLOG_NAMESPACE")
    rotate.add_argument("--secret", default=None, help="whsec_<base64> (default: generated)")


def _show(sub: Subscription, out: TextIO) -> None:
    state = "enabled" if sub.enabled else f"paused ({sub.paused_reason})"
    what = [*sub.event_types, *sub.statuses] or ["every event"]
    only = f" of {','.join(sub.workflows)}" if sub.workflows else ""
    print(f"{sub.webhook_id}  {sub.url}  {state}  {','.join(what)}{only}", file=out)


async def run(
    args: argparse.Namespace, webhooks: Webhooks, access: Access, namespace: str, out: TextIO
) -> int:
    """Carry out ``steplog webhooks ACTION``; the exit code."""
    namespace = args.namespace or namespace
    actor = Actor(key_id=None, namespace=namespace, remote="steplog cli")
    try:
        if args.action == "list":
            for sub in await webhooks.list_webhooks(namespace):
                _show(sub, out)
            return 0
        if args.action == "create":
            sub = await webhooks.create(
                namespace,
                url=args.url,
                secret=args.secret,
                description=args.description,
                event_types=args.event_types,
                statuses=args.statuses,
                workflows=args.workflows,
                enabled=not args.paused,
            )
            await access.record(actor, "webhook.create", str(sub.webhook_id), {"url": sub.url})
            _show(sub, out)
            print(f"secret (shown once): {sub.secret}", file=out)
            return 0
        if args.action == "rotate-secret":
            sub = await webhooks.rotate_secret(namespace, args.webhook_id, args.secret)
            until = (
                None if sub.previous_secret_until is None else iso_millis(sub.previous_secret_until)
            )
            details = {"generated": args.secret is None, "previous_secret_until": until}
            await access.record(actor, "webhook.rotate_secret", str(sub.webhook_id), details)
            _show(sub, out)
            print(f"secret (shown once): {sub.secret}", file=out)
            if until is not None:
                print(f"the previous secret signs too until {until}", file=out)
            return 0
        if args.action == "delete":
            await webhooks.delete(namespace, args.webhook_id)
            await access.record(actor, "webhook.delete", str(args.webhook_id), {})
            print(f"deleted {args.webhook_id}", file=out)
            return 0
        enabled = args.action == "resume"
        sub = await webhooks.update(namespace, args.webhook_id, enabled=enabled)
        await access.record(actor, f"webhook.{args.action}", str(sub.webhook_id), {})
        _show(sub, out)
        return 0
    except SteplogError as exc:
        print(f"steplog: {exc.message}", file=sys.stderr)
        return 1
