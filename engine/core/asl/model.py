"""A compiled ASL definition: one frozen class per state kind, each with exactly
its fields, every path, template, intrinsic, JSONata expression and Choice rule
parsed once when the definition is registered (``engine.core.asl.compile``).

``State`` is the tagged union of the kinds; the engine dispatches on it with
``match`` ending in ``assert_never``, so mypy names every place a new kind must
be handled. The engine reads only these objects, never the raw document.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.core.asl.choice import Rule
from engine.core.asl.jsonata import JsonataTemplate
from engine.core.asl.jsonpath import JsonPath
from engine.core.asl.payload import FieldExpression, Template

JSONPATH = "JSONPath"
JSONATA = "JSONata"

# A number field (TimeoutSeconds, MaxConcurrency, ...): the number itself, the
# compiled JsonPath of its *Path variant, or a JSONata template.
NumberField = int | float | JsonPath | JsonataTemplate
# An Assign block or a Map's ItemSelector: a payload template (JSONPath) or a
# JSONata template.
AnyTemplate = Template | JsonataTemplate


@dataclass(frozen=True, slots=True)
class PathIO:
    """A JSONPath state's data flow. A path that is None was null ("nothing");
    an absent path compiles to "$"."""

    input_path: JsonPath | None
    output_path: JsonPath | None
    result_path: JsonPath | None
    parameters: Template | None = None
    result_selector: Template | None = None
    assign: Template | None = None


@dataclass(frozen=True, slots=True)
class JsonataIO:
    """A JSONata state's data flow: each field None when absent."""

    arguments: JsonataTemplate | None = None
    output: JsonataTemplate | None = None
    assign: JsonataTemplate | None = None


IO = PathIO | JsonataIO


@dataclass(frozen=True, slots=True)
class Retrier:
    error_equals: tuple[str, ...]
    interval_seconds: float = 1.0
    max_attempts: int = 3
    backoff_rate: float = 2.0
    max_delay_seconds: float | None = None
    jitter: str = "NONE"


@dataclass(frozen=True, slots=True)
class Catcher:
    error_equals: tuple[str, ...]
    next: str
    # JSONPath: where the error output goes (None = discard, keep the input).
    result_path: JsonPath | None
    assign: AnyTemplate | None = None
    output: JsonataTemplate | None = None  # JSONata only


@dataclass(frozen=True, slots=True)
class ChoiceBranch:
    """One entry of a Choice state's Choices: a JSONPath ``rule`` or a JSONata
    ``condition`` (exactly one is set), the state it leads to, and what it assigns
    and outputs (``output`` JSONata only)."""

    rule: Rule | None
    condition: JsonataTemplate | None
    next: str
    assign: AnyTemplate | None = None
    output: JsonataTemplate | None = None


@dataclass(frozen=True, slots=True)
class ItemBatcher:
    max_items_per_batch: int | None
    batch_input: Any = None
    has_batch_input: bool = False


@dataclass(frozen=True, slots=True)
class PassState:
    name: str
    io: IO
    next: str | None
    result: Any = None
    has_result: bool = False


@dataclass(frozen=True, slots=True)
class TaskState:
    name: str
    io: IO
    next: str | None
    resource: str
    timeout_seconds: NumberField | None = None
    heartbeat_seconds: NumberField | None = None
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()


@dataclass(frozen=True, slots=True)
class ChoiceState:
    name: str
    io: IO
    choices: tuple[ChoiceBranch, ...]
    default: str | None = None


@dataclass(frozen=True, slots=True)
class WaitState:
    """Exactly one of seconds (a constant or JSONata template), seconds_path,
    timestamp (likewise) and timestamp_path is set."""

    name: str
    io: IO
    next: str | None
    seconds: JsonataTemplate | None = None
    seconds_path: JsonPath | None = None
    timestamp: JsonataTemplate | None = None
    timestamp_path: JsonPath | None = None


@dataclass(frozen=True, slots=True)
class SucceedState:
    name: str
    io: IO


@dataclass(frozen=True, slots=True)
class FailState:
    """Error and Cause: constants or JSONata templates; ErrorPath and CausePath
    (JSONPath): a path or an intrinsic, compiled as an expression named by its field."""

    name: str
    jsonata: bool
    error: JsonataTemplate | None = None
    cause: JsonataTemplate | None = None
    error_path: FieldExpression | None = None
    cause_path: FieldExpression | None = None


@dataclass(frozen=True, slots=True)
class ParallelState:
    name: str
    io: IO
    next: str | None
    branches: tuple[Machine, ...]
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()


@dataclass(frozen=True, slots=True)
class MapState:
    name: str
    io: IO
    next: str | None
    processor: Machine
    mode: str = "INLINE"  # ProcessorConfig.Mode ("DISTRIBUTED")
    items_path: JsonPath | None = None  # JSONPath
    items: JsonataTemplate | None = None  # JSONata Items
    items_text: str = ""  # the Items expression as AWS quotes it in errors
    item_selector: AnyTemplate | None = None
    max_concurrency: NumberField | None = None
    tolerated_failure_count: NumberField | None = None
    tolerated_failure_percentage: NumberField | None = None
    item_batcher: ItemBatcher | None = None
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()


State = (
    PassState
    | TaskState
    | ChoiceState
    | WaitState
    | SucceedState
    | FailState
    | ParallelState
    | MapState
)


@dataclass(frozen=True, slots=True)
class Machine:
    start_at: str
    states: dict[str, State]


@dataclass(frozen=True, slots=True)
class Definition:
    machine: Machine
    timeout_seconds: int | None = None

    def machine_at(self, scope: tuple[tuple[str, int], ...]) -> Machine:
        """The (sub-)machine reached by following (state name, branch index) pairs."""
        m = self.machine
        for state_name, index in scope:
            st = m.states[state_name]
            if isinstance(st, ParallelState):
                m = st.branches[index]
            else:
                assert isinstance(st, MapState)
                m = st.processor
        return m
