"""The Map state: works out its items (ItemsPath or JSONata Items, ItemSelector,
ItemBatcher) and its limits, records them with MapStateStarted, and launches the
first iterations; ``completion`` launches the rest as iterations end."""

from __future__ import annotations

from typing import Any

from engine.core import events as ev
from engine.core.asl import errors as E
from engine.core.asl.errors import StatesError
from engine.core.asl.jsonata import JsonataTemplate, type_error_cause
from engine.core.asl.jsonpath import dump_json
from engine.core.asl.model import JsonataIO, MapState
from engine.core.dataflow import (
    Scope,
    batch_items,
    evaluate_jsonata,
    jsonata_states,
    map_number,
    path_value,
)
from engine.core.decide.completion import composite_done, launch_iterations
from engine.core.decide.decider import PREFIXED, Decider, StateFailure


def execute(d: Decider, frame_id: str, st: MapState, raw: Any, scope: Scope) -> None:
    value, items = _items(d, frame_id, st, raw, scope)
    max_conc = map_number(st.max_concurrency, "MaxConcurrency", value, raw, scope)
    try:
        tol_count = map_number(
            st.tolerated_failure_count, "ToleratedFailureCount", value, raw, scope
        )
        tol_pct = map_number(
            st.tolerated_failure_percentage, "ToleratedFailurePercentage", value, raw, scope
        )
    except StatesError:
        # AWS checks the tolerated failure thresholds after the Map has started.
        d.emit(ev.MapStateStarted(frame=frame_id, name=st.name, mode=st.mode))
        raise
    if st.item_batcher is not None:
        items = batch_items(st.item_batcher, items)
    selector = st.item_selector
    if selector is None:
        selected = list(items)
    else:
        selected = []
        for index, item in enumerate(items):
            item_scope = d.scope(
                frame_id, st.name, {"Map": {"Item": {"Index": index, "Value": item}}}
            )
            if isinstance(selector, JsonataTemplate):
                states = jsonata_states(item_scope, raw)
                states["context"] = item_scope.context
                selected.append(evaluate_jsonata(selector, states, item_scope))
            else:
                selected.append(selector.render(value, item_scope.context, item_scope.env))
    d.emit(
        ev.MapStateStarted(
            frame=frame_id,
            name=st.name,
            length=len(selected),
            items=selected,
            max_concurrency=int(max_conc or 0),
            tolerated_failure_count=int(tol_count) if tol_count is not None else None,
            tolerated_failure_percentage=float(tol_pct) if tol_pct is not None else None,
            mode=st.mode,
        )
    )
    if not selected:
        d.emit(ev.MapStateSucceeded(frame=frame_id, name=st.name))
        composite_done(d, frame_id, st, [])
        return
    launch_iterations(d, frame_id, st)


def _items(d: Decider, frame_id: str, st: MapState, raw: Any, scope: Scope) -> tuple[Any, Any]:
    """The Map's effective input and its items; a JSONata Items failure fails
    the Map state itself (AWS records MapStateFailed)."""
    if isinstance(st.io, JsonataIO):
        try:
            if st.items is not None:
                items = evaluate_jsonata(st.items, jsonata_states(scope, raw), scope)
                if not isinstance(items, list):
                    cause = type_error_cause(st.items_text, "Items", "array", items)
                    raise StatesError(E.QUERY_EVALUATION_ERROR, cause)
            elif not isinstance(raw, list):
                cause = f"Map state input must be an array but was: {dump_json(raw)}"
                raise StatesError(E.QUERY_EVALUATION_ERROR, cause)
            else:
                items = raw
        except StatesError as err:
            cause = err.cause
            if err.error in PREFIXED:
                cause = d.runtime_cause(frame_id, st.name, cause)
            raise StateFailure(err.error, cause, state_failed=True) from None
        return raw, items
    value = path_value(st.io.input_path, raw, scope)
    items = path_value(st.items_path, value, scope) if st.items_path is not None else value
    if not isinstance(items, list):
        path = st.items_path.text if st.items_path is not None else "$"
        raise StatesError(
            E.RUNTIME,
            f"Invalid path '{path}' : The ItemsPath field must point to a JSON array",
        )
    return value, items
