"""JSONPath as AWS Step Functions evaluates it (the Jayway flavour).

Contract
--------
``compile_path(text) -> JsonPath`` parses once and raises ``PathSyntaxError``
(a ``ValueError``) on bad syntax. A ``JsonPath`` is immutable and cheap to
evaluate many times:

``JsonPath.evaluate(data, context=None, variables=None) -> Any``
    Roots: ``$`` reads ``data`` (the state input), ``$$`` reads ``context``
    (the context object), ``$name`` reads ``variables["name"]`` (workflow
    variables set by ``Assign``). A *definite* path (only fields and single
    indexes) returns the one value it selects or raises ``PathNotFound`` with
    Jayway's message (``No results for path: $['a']``, ``Missing property in
    path $['a']``, ...). An *indefinite* path (wildcard, slice, union, filter,
    deep scan) returns a list of every match, possibly empty, and never
    raises for missing members. Values are returned by reference, never
    copied: callers must not mutate them.

``JsonPath.is_context`` (``$$``), ``.variable`` (the variable name or None),
``.is_definite``, ``.is_reference`` (root ``$`` then only ``.field`` /
``['field']`` / ``[n]``: what ResultPath accepts).

``set_result(data, path, value)`` implements ResultPath: ``None`` keeps
``data``; ``$`` gives ``value``; otherwise a copy of ``data`` with ``value``
written at the path, creating missing objects. Only the containers along the
path are copied (shallowly). A non-object on the way raises
``StatesError(States.ResultPathMatchFailure, ...)``.

``apply_path(path, data, context, variables)`` implements InputPath and
OutputPath: ``None`` gives ``{}``; a path that finds nothing raises
``StatesError(States.Runtime, "Invalid path '<text>' : <jayway message>")``
(the engine adds its "An error occurred while executing the state ..."
prefix).
"""

from engine.core.asl.jsonpath.parser import PathSyntaxError, compile_path
from engine.core.asl.jsonpath.path import JsonPath, PathNotFound, apply_path
from engine.core.asl.jsonpath.rendering import dump_json, java_str, java_type_name
from engine.core.asl.jsonpath.results import set_result

__all__ = [
    "JsonPath",
    "PathNotFound",
    "PathSyntaxError",
    "apply_path",
    "compile_path",
    "dump_json",
    "java_str",
    "java_type_name",
    "set_result",
]
