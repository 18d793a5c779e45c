"""The span export process: `python -m steplog.export_process PROTOCOL`, which
steplog.span_export's ChildProcessExporter starts. It reads each batch of span records
off its stdin (`span_export.decode_batch`) and sends it with the OTLP exporter of
PROTOCOL (``http/protobuf``, the default, or ``grpc``: steplog.otlp's encoding, the
SDK's client, its retries), until its stdin closes. Why a process of its own, and how
it stops: steplog.span_export's docstring."""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
from collections.abc import Sequence
from typing import IO, cast

from opentelemetry.sdk.trace import ReadableSpan

from steplog.heap import freeze_heap
from steplog.otlp import LeanOtlpHttpExporter, lean_grpc_exporter
from steplog.span_export import LENGTH, decode_batch

_logger = logging.getLogger(__name__)

# How many batches the child holds read but not yet sent; beyond, the pipe fills.
_QUEUE = 4


def _read(pipe: IO[bytes], n: int) -> bytes | None:
    data = pipe.read(n)
    return data if len(data) == n else None


def _reader(pipe: IO[bytes], batches: queue.Queue[bytes | None]) -> None:
    """Reads messages off the pipe into ``batches`` (None at its end), so the parent
    is not held up while a batch is sent."""
    try:
        while (head := _read(pipe, LENGTH.size)) is not None:
            message = _read(pipe, LENGTH.unpack(head)[0])
            if message is None:
                break
            batches.put(message)
    finally:
        batches.put(None)


def main(argv: Sequence[str]) -> int:
    """The child: export every batch read from stdin until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(format="span export: %(levelname)s %(name)s: %(message)s")

    protocol = argv[0] if argv else "http/protobuf"
    exporter = lean_grpc_exporter() if protocol == "grpc" else LeanOtlpHttpExporter()
    # As a serving process does: its imports are never scanned again by the garbage
    # collector, and each batch's thousands of short-lived (acyclic) objects do not set
    # off a young collection every 700 allocations.
    freeze_heap()
    batches: queue.Queue[bytes | None] = queue.Queue(_QUEUE)
    threading.Thread(target=_reader, args=(sys.stdin.buffer, batches), daemon=True).start()
    while (message := batches.get()) is not None:
        try:
            spans = decode_batch(message)
        except Exception:
            _logger.exception("Failed to decode a span batch")
            continue
        # (records, not ReadableSpans: steplog.otlp's exporters encode them as they are)
        exporter.export(cast(Sequence[ReadableSpan], spans))
    exporter.shutdown()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Everything read was sent: exit without the interpreter's finalization (tearing
    # down the modules and objects of the exporter, its client and protobuf), which
    # holds nothing to keep and cost more than a thousand spans' export.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
