"""The HTTP server around the application: limits on connections and reads, and
problem+json for the errors aiohttp answers itself, before any middleware.

`HardenedAppRunner(app, limits)` is a `web.AppRunner` whose connections are served
by `HardenedRequestHandler`:
- at most ``max_connections`` open connections: one more gets a fixed 503
  problem+json (`too_many_connections`, Retry-After) and is closed at once;
- a request's headers must all arrive within ``header_timeout_s`` of its first
  byte (a client sending one byte a second is closed); an idle keep-alive
  connection is closed after ``keepalive_timeout_s``; the body has its own
  deadline (ApiConfig.body_timeout_s, api/hygiene.py);
- the request line, each header field and the number of headers are capped
  (``max_line_size``, ``max_field_size``, ``max_headers``);
- a request aiohttp cannot parse (malformed request line or method, a line over
  its limit, too many headers, bad chunked encoding, ...) gets a problem+json
  400 with a fixed detail that never echoes what was sent, and one WARNING log
  line without a traceback.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import (
    BadHttpMessage,
    BadHttpMethod,
    BadStatusLine,
    LineTooLong,
    TransferEncodingError,
)
from aiohttp.web_protocol import RequestHandler

from api.hygiene import set_common_headers
from api.problems import RETRY_AFTER_SECONDS, problem

log = logging.getLogger("steplog.api.server")


class ServerLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Connection and read limits of the HTTP server (steplog/settings.py documents
    the settings they come from)."""

    max_connections: int = 1000
    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 15.0
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 100
    # How long a response waits to read (and drop) a body its handler did not read.
    lingering_time_s: float = 2.0


# aiohttp's messages that never contain request data; any other is replaced by a
# generic detail (aiohttp's own messages quote the offending line).
_FIXED_MESSAGES = frozenset(
    {
        "Too many headers received",
        "Too many trailers received",
        "Missing 'Host' header in request.",
        "Request has invalid `Transfer-Encoding`",
        "Bad line ending, expected CRLF",
        "Data after `Connection: close`",
    }
)


def _describe(exc: BaseException | None) -> tuple[str, str]:
    """(code, detail) of a request aiohttp could not parse, without its content."""
    match exc:
        case LineTooLong():
            return "line_too_long", "the request line or a header field is too long"
        case BadHttpMethod():
            return "bad_http_request", "the request method is malformed"
        case BadStatusLine():
            return "bad_http_request", "the request line is malformed"
        case TransferEncodingError():
            return "bad_http_request", "the chunked body is malformed"
        case BadHttpMessage() if exc.message in _FIXED_MESSAGES:
            return "bad_http_request", exc.message
        case _:
            return "bad_http_request", "the request is not valid HTTP/1.1"


_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/problem+json\r\n"
    b"Retry-After: " + RETRY_AFTER_SECONDS.encode() + b"\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Cache-Control: no-store\r\n"
    b"Server: steplog\r\n"
    b"Connection: close\r\n"
)
_TOO_MANY_BODY = msgspec.json.encode(
    {
        "type": "urn:steplog:problem:too_many_connections",
        "title": "Too many connections",
        "status": 503,
        "code": "too_many_connections",
        "detail": "the server has as many open connections as it accepts; retry later",
    }
)
TOO_MANY_CONNECTIONS_RESPONSE = (
    _TOO_MANY + b"Content-Length: " + str(len(_TOO_MANY_BODY)).encode() + b"\r\n\r\n"
) + _TOO_MANY_BODY


class HardenedRequestHandler(RequestHandler):
    """One connection, with steplog's limits (see the module docstring)."""

    def __init__(self, manager: web.Server, *, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if isinstance(manager, HardenedServer) and manager.full():
            self._refused = True
            manager.note_refusal()
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(TOO_MANY_CONNECTIONS_RESPONSE)
            transport.close()  # after the write is flushed
            return
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if (
            data
            and self._header_timer is None
            and not self._request_in_progress
            and not self._messages
        ):
            # The first bytes of a request: its headers must be complete in time.
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout_s, self._headers_too_slow
            )
        super().data_received(data)
        if self._messages:
            self._cancel_header_timer()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._request_in_progress or self._messages:
            return
        log.warning(
            "closed a connection whose request headers took over %g s",
            self._limits.header_timeout_s,
        )
        self.force_close()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """problem+json instead of aiohttp's text/plain page that quotes the input."""
        if status >= 500:
            # Not a client's malformed request: a handler escaped the error middleware.
            log.error("request failed outside the error middleware (%d)", status, exc_info=exc)
            code, detail = (
                ("internal", "internal error")
                if status == 500
                else (f"http_{status}", "the request could not be served")
            )
        else:
            code, detail = _describe(exc)
            log.warning(
                "refused a malformed HTTP request from %s: %s (%s)",
                request.remote,
                code,
                type(exc).__name__,
            )
        if request.writer.output_size > 0:
            # Some of a response went out already: the connection is beyond repair.
            raise ConnectionError("response already started; cannot send an error")
        response = problem(None, status, code, detail)
        set_common_headers(response)
        response.force_close()
        return response


REFUSAL_LOG_EVERY_S = 10.0


class HardenedServer(web.Server):
    """A `web.Server` whose connections are `HardenedRequestHandler`s."""

    def __init__(self, base: web.Server, limits: ServerLimits) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self.limits = limits
        self._refused = 0
        self._refusal_logged_at = -REFUSAL_LOG_EVERY_S

    def full(self) -> bool:
        return len(self.connections) >= self.limits.max_connections

    def note_refusal(self) -> None:
        """Count a refused connection; one WARNING line per burst (at most every 10 s)."""
        self._refused += 1
        now = self._loop.time()
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            log.warning(
                "refused %d connection(s): %d are open, the limit",
                self._refused,
                self.limits.max_connections,
            )
            self._refused, self._refusal_logged_at = 0, now

    def __call__(self) -> HardenedRequestHandler:
        return HardenedRequestHandler(self, loop=self._loop, limits=self.limits, **self._kwargs)


class HardenedAppRunner(web.AppRunner):
    """`web.AppRunner` with steplog's limits. Signals are the caller's business
    (handle_signals=False); access lines come from the API's own middleware."""

    def __init__(self, app: web.Application, limits: ServerLimits) -> None:
        super().__init__(
            app,
            handle_signals=False,
            access_log=None,
            keepalive_timeout=limits.keepalive_timeout_s,
            max_line_size=limits.max_line_size,
            max_field_size=limits.max_field_size,
            max_headers=limits.max_headers,
            lingering_time=limits.lingering_time_s,
        )
        self._limits = limits

    async def _make_server(self) -> web.Server:
        return HardenedServer(await super()._make_server(), self._limits)
