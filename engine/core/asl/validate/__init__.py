"""Validation of Amazon States Language definitions, as AWS does at creation.

Contract
--------
`validate_definition(doc)` returns every problem it finds in `doc` (a decoded
JSON value) as `ValidationError(path, message)`, in document order; an empty
list means the definition is valid. It never raises on bad input and does no
I/O. `path` is a JSONPath-like location of the offending value, e.g.
`$.States.Approve.Next`, `$.States['My state'].Retry[0].BackoffRate`, or
`$.States.P.Branches[0].States.X` for nested machines.

Checked (each is an error AWS reports as well):
- top level: an object with `StartAt` (string naming a state) and `States`
  (non-empty object); `Comment`, `Version`, `TimeoutSeconds`, `QueryLanguage`;
  nested machines (Parallel `Branches`, Map `ItemProcessor`/`Iterator`) alike.
- per state: a known `Type`; only the fields that type allows in its query
  language; required fields; field types and ranges; state names of at most
  80 characters, unique across the whole machine.
- transitions: every `Next`, `Default` and `Catch[].Next` names a state of the
  same scope; non-terminal states have exactly one of `Next` or `End: true`;
  Choice, Succeed and Fail have neither; every state is reachable from
  `StartAt` within its scope.
- Retry/Catch: non-empty `ErrorEquals` of strings; `States.ALL` alone and only
  in the last retrier/catcher; retrier field ranges.
- paths (`InputPath`, `OutputPath`, `ResultPath`, `ItemsPath`, `*Path`) compile
  as JSONPath (`ResultPath` and `*Path` as reference paths); `.$` keys of
  payload templates hold a path or an intrinsic function call.
- QueryLanguage: JSONata states reject JSONPath-only fields and JSONPath
  states reject JSONata-only fields; a JSONPath state inside a JSONata
  machine is an error.
- Choice rules are checked by `engine.core.asl.choice.check_choice`.
"""

from engine.core.asl.validate.machines import validate_definition
from engine.core.asl.validate.report import ValidationError, json_path_key

__all__ = ["ValidationError", "json_path_key", "validate_definition"]
