"""States.* intrinsic functions, parsed once and evaluated per call.

Contract
--------
``compile_intrinsic(text) -> Intrinsic`` parses a call such as
``States.Format('Hello {}', $.name)`` and checks the function name and its
argument count; it raises ``IntrinsicSyntaxError`` (a ``ValueError``) on bad
syntax. ``is_intrinsic(text)`` tells a call apart from a path.

``Intrinsic.evaluate(data, context, env) -> Any`` evaluates the call. Path
arguments read ``$`` from ``data``, ``$$`` from ``context`` and ``$name``
from ``env.variables``. Randomness (MathRandom without a seed, UUID) comes
only from ``env.rng`` / ``env.uuid``. Failures:

* a function rejects its arguments: ``StatesError(States.IntrinsicFailure,
  cause)``;
* a path argument selects nothing: ``ArgumentPathNotFound`` (a
  ``PathNotFound``) carrying ``path_text``; the template layer words it as
  AWS does for the field being rendered.

Argument syntax: string literals in single quotes where ``\\'``, ``\\\\``,
``\\{`` and ``\\}`` are escapes (``{``/``}`` stay escaped for States.Format,
so ``'\\{}'`` is a literal ``{}`` there); integers and decimals (a JSON int
stays a Python int); ``true``, ``false``, ``null``; JSONPaths (``$.x``,
``$$.x``, ``$var.x``); nested calls.
"""

from engine.core.asl.intrinsics.call import ArgumentPathNotFound, Intrinsic
from engine.core.asl.intrinsics.functions import range_too_long
from engine.core.asl.intrinsics.parser import IntrinsicSyntaxError, compile_intrinsic, is_intrinsic

__all__ = [
    "ArgumentPathNotFound",
    "Intrinsic",
    "IntrinsicSyntaxError",
    "compile_intrinsic",
    "is_intrinsic",
    "range_too_long",
]
