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
from typing import Any


def _seeded_uuid_factory(rng: random.Random) -> Callable[[], str]:
    """UUID4-shaped strings drawn from ``rng`` (deterministic for a seed)."""

    def make() -> str:
        return str(_uuid.UUID(int=rng.getrandbits(128), version=4))

    return make


class EvalEnv:
    """Variables plus deterministic randomness for one evaluation.

    ``variables`` maps variable names (without ``$``) to JSON values. The
    dict itself is never mutated by engine/asl. ``rng`` is ``random.Random(seed)``
    unless one is given, and ``uuid`` draws UUIDs from ``rng`` unless given; both
    are made at their first use: the engine builds an env for every state it
    evaluates, seeding a Random costs more than evaluating most states, and few
    states draw anything.
    """

    __slots__ = ("_rng", "_seed", "_uuid", "variables")

    def __init__(
        self,
        variables: dict[str, Any] | None = None,
        rng: random.Random | None = None,
        uuid: Callable[[], str] | None = None,
        *,
        seed: int | str = 0,
    ) -> None:
        self.variables: dict[str, Any] = variables if variables is not None else {}
        self._rng = rng
        self._uuid = uuid
        self._seed = seed

    @property
    def rng(self) -> random.Random:
        if self._rng is None:
            self._rng = random.Random(self._seed)
        return self._rng

    @property
    def uuid(self) -> Callable[[], str]:
        if self._uuid is None:
            self._uuid = _seeded_uuid_factory(self.rng)
        return self._uuid

    @classmethod
    def seeded(cls, seed: int | str, variables: dict[str, Any] | None = None) -> EvalEnv:
        """An env whose rng and uuids are fully determined by ``seed``."""
        return cls(variables, seed=seed)
