"""The audit commands behind the CLI: `steplog verify`, `steplog export`,
`steplog projections status`. Each takes open resources and a text stream to
write to, so tests call them directly.

verify: every execution (of one workflow, or all; at most ``limit``) is loaded
from PostgreSQL in id order, its pinned definition compiled, and its history
replayed through decide (engine.core.replay). One line per execution that differs,
a summary at the end; the exit code is 1 when any differs.
"""

from __future__ import annotations

from typing import TextIO
from uuid import UUID

import msgspec

from engine.adapters.store import EventStore, ExecutionRecord
from engine.core import events as ev
from engine.core.asl.model import Definition
from engine.core.decide import decide
from engine.core.replay import DecideFn, Recorded, Verdict, verify_history
from engine.errors import InvalidDefinition, WorkflowNotFound
from steplog.app import Resources

PAGE = 200


class VerifyReport(msgspec.Struct):
    checked: int = 0
    differ: list[str] = []  # execution ids

    @property
    def exit_code(self) -> int:
        return 1 if self.differ else 0


def _describe(event: ev.Event | None) -> str:
    if event is None:
        return "(nothing)"
    text = msgspec.json.encode(event).decode()
    return text if len(text) <= 300 else text[:297] + "..."


async def verify_one(
    store: EventStore,
    definition: Definition,
    record: ExecutionRecord,
    decide_fn: DecideFn = decide,
) -> Verdict:
    """Replay one execution's recorded history through ``decide_fn``."""
    stored = await store.load(record.execution_id)
    history = [Recorded(e.seq, ev.decode_event(e.data), e.timestamp) for e in stored]
    return verify_history(definition, str(record.execution_id), history, decide_fn)


async def verify(
    r: Resources,
    out: TextIO,
    *,
    workflow: str | None = None,
    limit: int | None = None,
    decide_fn: DecideFn = decide,
) -> VerifyReport:
    """Verify executions of ``r.settings.namespace``; writes the report to ``out``."""
    report = VerifyReport()
    after: UUID | None = None
    while limit is None or report.checked < limit:
        size = PAGE if limit is None else min(PAGE, limit - report.checked)
        page = await r.store.list_executions(r.settings.namespace, workflow, after, size)
        if not page:
            break
        for record in page:
            report.checked += 1
            problem = await _check(r, record, decide_fn)
            if problem is not None:
                report.differ.append(str(record.execution_id))
                out.write(
                    f"DIFFERS {record.execution_id} ({record.workflow} v{record.version}): {problem}\n"
                )
        after = page[-1].execution_id
    out.write(
        f"verified {report.checked} executions: {len(report.differ)} differ under this engine\n"
    )
    return report


async def _check(r: Resources, record: ExecutionRecord, decide_fn: DecideFn) -> str | None:
    try:
        definition = await r.service.definition(record.namespace, record.workflow, record.version)
    except (WorkflowNotFound, InvalidDefinition) as exc:
        return f"its definition no longer loads: {exc}"
    verdict = await verify_one(r.store, definition, record, decide_fn)
    d = verdict.divergence
    if d is None:
        return None
    return f"at seq {d.seq}: {d.reason}; expected {_describe(d.expected)}; got {_describe(d.got)}"


async def export(r: Resources, execution_id: UUID, out: TextIO, include_data: bool = True) -> int:
    """Write an execution's history as JSON Lines; 1 when there is no such execution."""
    if await r.store.get_execution(execution_id, None) is None:
        return 1
    async for chunk in r.queries.export(execution_id, include_data):
        out.write(chunk.decode())
    return 0


async def status(r: Resources, out: TextIO) -> int:
    """Each projection's checkpoint and lag, one line each."""
    rows = await r.queries.projection_status()
    out.write(f"{'projection':<16} {'tx_id':>12} {'position':>12} {'lag':>10} {'behind_s':>9}\n")
    for s in rows:
        out.write(
            f"{s.name:<16} {s.tx_id:>12} {s.position:>12} {s.lag_events:>10}"
            f" {s.behind_seconds:>9.1f}\n"
        )
    return 0
