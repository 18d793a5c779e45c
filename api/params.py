"""Path parameters shared by the route modules, checked once here."""

from __future__ import annotations

from uuid import UUID

from aiohttp import web

from api.schemas import WORKFLOW_NAME, parse_execution_id
from engine.errors import ExecutionNotFound, InvalidRequest
from engine.logcontext import execution_id_var


def workflow_name(request: web.Request) -> str:
    """The {name} path segment, checked: 1-80 of [A-Za-z0-9_.-]."""
    name = request.match_info["name"]
    if not WORKFLOW_NAME.fullmatch(name):
        raise InvalidRequest(f"workflow name {name!r} must be 1-80 of A-Z a-z 0-9 _ . -")
    return name


def execution_id(request: web.Request) -> UUID:
    """The {id} path segment; also names the execution in this request's logs.
    A malformed id is answered like an unknown one (ExecutionNotFound)."""
    text = request.match_info["id"]
    parsed = parse_execution_id(text)
    if parsed is None:
        raise ExecutionNotFound(f"no execution {text!r}")
    execution_id_var.set(str(parsed))
    return parsed
