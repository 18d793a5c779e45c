"""JSONata expressions (QueryLanguage "JSONata") over the jsonata-python package.

Contract
--------
A JSONata value in a definition is a string that starts with ``{%`` and ends
with ``%}`` exactly (``" {% x %} "`` with outer spaces is a plain string, as
AWS treats it). ``is_jsonata(value)`` tests for that.

``compile_expression(text, field="") -> JsonataExpr`` parses once and raises
``JsonataSyntaxError`` (a ``ValueError``). ``field`` names the definition
field (``Output``, ``Assign/result``, ``Items``...) for error causes.

``JsonataExpr.evaluate(states, variables, env=None, allow_undefined=False)``
binds ``$states`` to ``states`` (keys ``input``, ``context``, and where the
state has them ``result``, ``errorOutput``) and every workflow variable by
name, and returns a plain JSON value (no jsonata sequences, null as None).
AWS's extra functions are available: ``$partition``, ``$range``, ``$hash``,
``$parse``, and, drawing only on ``env``, ``$random`` and ``$uuid``.
``$now()``/``$millis()`` read ``$states.context.State.EnteredTime`` so that
evaluation never reads the clock. Failures raise ``StatesError(
States.QueryEvaluationError, cause)`` with the bare AWS cause (the engine
adds the "An error occurred while executing the state ..." prefix):

* ``The JSONata expression '<expr>' specified for the field '<field>'
  returned nothing (undefined).`` unless ``allow_undefined`` (then the
  result is ``UNDEFINED``);
* ``... returned an unsupported result type.`` for a function value;
* ``... threw an error during evaluation. <code>: <message>`` otherwise.

``compile_jsonata_template(obj, field) -> JsonataTemplate`` compiles
Arguments / Output / Assign values: JSON in which any ``{% %}`` string, at
any depth, is an expression (field names grow as ``Output/key``).
``JsonataTemplate.render(states, variables, env)`` builds the value.

``type_error_cause(expr_text, field, expected, value)`` words a result of
the wrong type, e.g. Map ``Items`` that is not an array.

Known gaps versus AWS: jsonata-python follows jsonata-js 2.x; AWS runs its
own Java port, so error messages other than the ones above, and numeric
corner cases of ``$string``/``$formatNumber``, may differ.
"""

from engine.core.asl.jsonata.expression import (
    UNDEFINED,
    JsonataExpr,
    JsonataSyntaxError,
    compile_expression,
    is_jsonata,
    type_error_cause,
)
from engine.core.asl.jsonata.templates import JsonataTemplate, compile_jsonata_template

__all__ = [
    "UNDEFINED",
    "JsonataExpr",
    "JsonataSyntaxError",
    "JsonataTemplate",
    "compile_expression",
    "compile_jsonata_template",
    "is_jsonata",
    "type_error_cause",
]
