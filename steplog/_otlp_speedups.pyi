# steplog/_otlp_speedups.c (optional: see setup.py).
from typing import Any

def encode_spans(records: list[list[Any]], /) -> bytes: ...
