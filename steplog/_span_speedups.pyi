# steplog/_span_speedups.c (optional: see setup.py).
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

class SpanCore:
    def end(self, end_time: int | None = None) -> None: ...
    def record(self) -> tuple[Any, ...]: ...
    def is_recording(self) -> bool: ...
    def add_own_event(
        self, name: str, attributes: Mapping[str, Any], timestamp: int | None = None, /
    ) -> None: ...
    def set_own_attributes(self, attributes: Mapping[str, Any], /) -> None: ...
    @property
    def traceparent(self) -> str: ...

class QueueEmit:
    def __init__(self, batch_processor: Any, /) -> None: ...
    def __call__(self, record: Any, /) -> None: ...

class CurrentSpan:
    def __init__(self, span: Any, record: bool, /) -> None: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, exc_type: object, exc_val: object, exc_tb: object, /) -> None: ...

def child(
    tracer: Any,
    span_type: type[Any],
    name: str,
    traceparent: str,
    kind: Any,
    attributes: dict[str, Any] | None,
    own: bool,
    /,
) -> Any: ...
def root(
    tracer: Any, span_type: type[Any], name: str, kind: Any, attributes: Any, own: bool, /
) -> Any: ...
def local_child(
    tracer: Any,
    span_type: type[Any],
    parent: Any,
    name: str,
    kind: Any,
    attributes: Any,
    own: bool,
    /,
) -> Any: ...
def configure(
    *,
    current_var: ContextVar[Any] | None,
    span_key: str,
    context_type: type[Any],
    unset_status: Any,
    unset_record: tuple[Any, Any],
    trace_state: Any,
    getrandbits: Callable[[int], int],
    fail: Callable[[Any, Exception], None],
    detach_failed: Callable[[BaseException], None],
    link_records: Callable[[Sequence[Any]], list[tuple[Any, ...]]],
    sampled: int,
    random: int,
) -> None: ...
