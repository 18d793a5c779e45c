"""What the API reads of the settings, as one frozen struct (steplog/ builds it)."""

from __future__ import annotations

import msgspec


class ApiConfig(msgspec.Struct, frozen=True, kw_only=True):
    """``namespace``: the namespace every route works in. ``max_payload_bytes``: the
    largest definition body and execution input accepted (413 beyond).
    ``body_timeout_s``: how long a client has to send a whole request body (408 beyond).
    ``cors_allow_origins``: origins allowed to call the API from a browser ("*" for
    any); empty, the default, turns CORS off. ``auth``: every route but the health
    checks needs an API key (api/auth.py); off (a development server on loopback only),
    every request is the anonymous admin of ``namespace``. ``metrics_token``: the bearer
    token /metrics needs; without one, /metrics is served to loopback clients only.
    ``request_timeout_s``: a request not answered within it is answered 503
    (api/deadline.py)."""

    namespace: str
    max_payload_bytes: int
    # Step Functions' quota on a definition (1 MiB); a definition may be larger than
    # an input, e.g. with a large Pass Result (which then fails at run time as on AWS).
    max_definition_bytes: int = 1_048_576
    body_timeout_s: float = 30.0
    cors_allow_origins: tuple[str, ...] = ()
    auth: bool = True
    metrics_token: str | None = None
    request_timeout_s: float = 10.0
