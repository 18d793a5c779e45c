"""The garbage collector's settings for a long-running steplog process (`freeze_heap`):
a serving process's, and the span export process's (steplog.export_process)."""

from __future__ import annotations

import gc


def freeze_heap() -> None:
    """Collect cyclic garbage once, then move every object alive now (modules, pools,
    the app, what start-up made) to the garbage collector's permanent generation, so
    that each later full collection scans only what was made since: a process's full
    collections then cost a fraction (about 100,000 objects fewer to scan). What tracing
    allocates per span (kept in the span processor's queue until exported, so promoted
    to the oldest generation) triggers extra full collections, which this makes cheap
    (docs/observability.md, "What it costs"). Objects alive now are never collected if
    they later form unreachable cycles: start-up objects live as long as the process.

    Then the youngest generation is collected after YOUNG_COLLECTION_AT more
    allocations than deallocations of tracked objects (CPython's default is 700). A
    transition allocates and frees thousands of short-lived objects in bursts (a batch
    decoded, a response built), so at 700 a burst's middle set off a young collection
    every few transitions, and what it found alive (most of the burst) was promoted
    and scanned again by the older generations: 5% of the process's CPU in a 3-Task
    run (gc.callbacks). At 10,000, 6 young collections per 1,000 such executions; what
    is left uncollected meanwhile is at most that many objects of cyclic garbage."""
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_AT, middle, oldest)


YOUNG_COLLECTION_AT = 10_000
