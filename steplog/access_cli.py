"""`steplog keys ...` and `steplog namespaces ...`: the same actions as the admin routes,
run with the database's credentials (audited with no key id and remote "steplog cli")."""

from __future__ import annotations

import argparse
from typing import TextIO

from engine.access import Access, Actor, KeyRecord
from engine.errors import SteplogError

CLI_ACTOR = Actor(key_id=None, namespace=None, remote="steplog cli")


def _when(value: object) -> str:
    return "-" if value is None else str(value)


def _key_line(k: KeyRecord) -> str:
    state = "revoked" if k.revoked_at is not None else "active"
    return "\t".join(
        (
            k.key_id,
            k.prefix + "...",
            k.namespace or "*",
            k.role,
            state,
            _when(k.expires_at),
            _when(k.last_used_at),
            k.name,
        )
    )


async def run_access_command(
    access: Access, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    try:
        return await _run(access, args, out)
    except SteplogError as exc:
        err.write(f"steplog: {exc.message}\n")
        return 1


async def _run(access: Access, args: argparse.Namespace, out: TextIO) -> int:
    match args.command, args.action:
        case "keys", "create":
            namespace = None if args.global_key else args.namespace
            actor = Actor(key_id=None, namespace=namespace, remote=CLI_ACTOR.remote)
            record, token = await access.create_key(
                namespace=namespace,
                role=args.role,
                name=args.name,
                expires_at=args.expires,
                actor=actor,
            )
            out.write(f"{token}\n")
            out.write(f"# key id {record.key_id}; shown this once, only a hash is stored\n")
        case "keys", "list":
            out.write("key_id\tprefix\tnamespace\trole\tstate\texpires_at\tlast_used_at\tname\n")
            for k in await access.list_keys(args.namespace):
                out.write(_key_line(k) + "\n")
        case "keys", "revoke":
            record = await access.revoke_key(args.key_id, None, CLI_ACTOR)
            out.write(f"revoked {record.key_id} at {record.revoked_at}\n")
        case "namespaces", "create":
            actor = Actor(key_id=None, namespace=args.name, remote=CLI_ACTOR.remote)
            ns, created = await access.create_namespace(args.name, actor)
            out.write(f"{'created' if created else 'exists'} {ns.name}\n")
        case "namespaces", "list":
            for ns in await access.list_namespaces():
                out.write(f"{ns.name}\t{ns.created_at}\n")
        case _:
            return 2
    return 0
