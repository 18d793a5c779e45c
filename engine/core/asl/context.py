"""Evaluation environment shared by paths, intrinsics, templates and JSONata.

``EvalEnv`` carries everything an evaluation may read besides the state input
and the context object: the workflow variables (``Assign``) and the only
sources of randomness. The engine builds the ``rng`` and ``uuid`` from
recorded values (seeded from the execution id and event seq), so evaluating
the same expression during replay gives the same result. Nothing in
engine/asl calls the ``random`` module functions or ``uuid4`` directly.
"""

from __future__ import annotations

import random
import uuid as _uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _seeded_uuid_factory(rng: random.Random) -> Callable[[], str]:
    """UUID4-shaped strings drawn from ``rng`` (deterministic for a seed)."""

    def make() -> str:
        return str(_uuid.UUID(int=rng.getrandbits(128), version=4))

    return make


@dataclass(frozen=True, slots=True)
class EvalEnv:
    """Variables plus deterministic randomness for one evaluation.

    ``variables`` maps variable names (without ``$``) to JSON values. The
    dict itself is never mutated by engine/asl.
    """

    variables: dict[str, Any] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    # None (the default) means "UUIDs drawn from rng"; __post_init__ replaces
    # it, so after construction ``uuid`` is always a callable.
    uuid: Callable[[], str] = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.uuid is None:
            object.__setattr__(self, "uuid", _seeded_uuid_factory(self.rng))

    @classmethod
    def seeded(cls, seed: int | str, variables: dict[str, Any] | None = None) -> EvalEnv:
        """An env whose rng and uuids are fully determined by ``seed``."""
        rng = random.Random(seed)
        return cls(
            variables=variables if variables is not None else {},
            rng=rng,
            uuid=_seeded_uuid_factory(rng),
        )
