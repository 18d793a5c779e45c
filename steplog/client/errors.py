"""The client's errors: one class per family of answers, each carrying the server's
problem+json (``code``, ``detail``, ``request_id``, ``errors``).

    SteplogClientError
      InvalidRequest   400, 406, 408, 413, 415, 422 (code: invalid_request, invalid_body, ...)
      Unauthenticated  401
      Forbidden        403
      NotFound         404 (code: workflow_not_found, execution_not_found, ...)
      Conflict         409 (code: execution_name_conflict, ...)
      RateLimited      429 (code: rate_limited, running_quota_exceeded), ``retry_after``
      Unavailable      503, or no answer at all (connection refused, reset, timed out),
                       ``retry_after``
      ServerError      any other 5xx
"""

from __future__ import annotations

from typing import Any

import msgspec


class SteplogClientError(Exception):
    """An answer of the server that is not a success (or no answer: `Unavailable`)."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        request_id: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.errors = errors or []
        # Seconds the server asked to wait before trying again (Retry-After), if any.
        self.retry_after = retry_after


class InvalidRequest(SteplogClientError):
    pass


class Unauthenticated(SteplogClientError):
    pass


class Forbidden(SteplogClientError):
    pass


class NotFound(SteplogClientError):
    pass


class Conflict(SteplogClientError):
    pass


class RateLimited(SteplogClientError):
    pass


class Unavailable(SteplogClientError):
    pass


class ServerError(SteplogClientError):
    pass


class WaitTimeout(TimeoutError):
    """`AsyncClient.wait` gave up before the execution ended."""


_FAMILIES: dict[int, type[SteplogClientError]] = {
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
    503: Unavailable,
}


def retry_after_of(value: str | None) -> float | None:
    """Retry-After in seconds (the delay form; an HTTP date is not used by steplog)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class _Problem(msgspec.Struct):
    code: str = ""
    detail: str = ""
    request_id: str | None = None
    errors: list[dict[str, Any]] = []


def error_from(status: int, body: bytes, retry_after: str | None) -> SteplogClientError:
    """The exception for an error answer (problem+json, or anything else a proxy sent)."""
    try:
        problem = msgspec.json.decode(body, type=_Problem)
    except (msgspec.DecodeError, msgspec.ValidationError):
        problem = _Problem(detail=body[:200].decode("utf-8", "replace"))
    code = problem.code or f"http_{status}"
    if status in _FAMILIES:
        kind = _FAMILIES[status]
    elif 400 <= status < 500:
        kind = InvalidRequest
    else:
        kind = ServerError
    return kind(
        status,
        code,
        problem.detail,
        request_id=problem.request_id,
        errors=problem.errors,
        retry_after=retry_after_of(retry_after),
    )
