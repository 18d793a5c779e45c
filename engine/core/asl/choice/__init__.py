"""Compiled Choice rules of the Amazon States Language (JSONPath flavour).

Contract
--------
- `compile_rule(obj, path)` turns one Boolean expression (a comparison, an
  `Is*` test, or `And`/`Or`/`Not` nesting) into a `Rule`, once, at
  registration. A malformed expression raises `InvalidChoiceRule`, which
  carries every problem found as `(json path, message)` pairs; `check_rule`
  returns the same list without raising (the validator uses it).
- `compile_choice(obj, path)` compiles one entry of a Choice state's
  `Choices` into `CompiledChoice(rule, next, condition, assign, output)`.
  A JSONPath entry has a `rule`; a JSONata entry (`Condition`) has `rule=None`
  and its raw `condition` (a `{% ... %}` string or a boolean) for the JSONata
  module to evaluate. `Assign` and `Output` are carried through raw.
- `Rule.matches(data, context, variables) -> bool` is pure. As on AWS:
  a comparison whose value (or, for `...Path` operators, whose other operand)
  has the wrong type is false, not an error; a `Variable` (or `...Path`
  operand) that selects nothing raises `StatesError("States.Runtime",
  "Invalid path '<path>': The choice state's condition path references an
  invalid value.")`, except under `IsPresent`, which tests exactly that.
- Strings compare by UTF-16 code units (Java `String.compareTo`), numbers by
  value (booleans are not numbers), timestamps as instants with nanosecond
  precision. Timestamps follow the ASL profile of RFC 3339: upper-case `T`,
  seconds required, 1-9 fraction digits, `Z` or a `+hh:mm`/`-hh:mm` offset.
- `StringMatches` patterns: `*` matches any run of characters (also none),
  `\\*` a literal `*`, `\\\\` a literal backslash.
"""

from engine.core.asl.choice.compiler import (
    InvalidChoiceRule,
    check_choice,
    check_rule,
    compile_choice,
    compile_rule,
)
from engine.core.asl.choice.operators import CHOICE_RULE_OPERATORS, parse_timestamp
from engine.core.asl.choice.rules import CompiledChoice, Rule

__all__ = [
    "CHOICE_RULE_OPERATORS",
    "CompiledChoice",
    "InvalidChoiceRule",
    "Rule",
    "check_choice",
    "check_rule",
    "compile_choice",
    "compile_rule",
    "parse_timestamp",
]
