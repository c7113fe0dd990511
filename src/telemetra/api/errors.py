"""One error shape for every failure: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import traceback
from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

log = structlog.get_logger("telemetra.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_request",
    429: "rate_limited",
    501: "not_implemented",
    503: "unavailable",
}
# PostgreSQL refuses some text the client sent (NUL characters, "\u0000" in JSON): a 422, not a 500.
UNSTORABLE_TEXT = {"22021", "22P05"}  # character_not_in_repertoire, untranslatable_character
# The server cannot take the request now: admin_shutdown, crash_shutdown, cannot_connect_now,
# too_many_connections (and the whole class 08, connection exceptions).
SERVER_UNAVAILABLE = {"57P01", "57P02", "57P03", "53300"}
DATABASE_RETRY_S = 5
DATABASE_DOWN = "the database is unavailable; retry shortly"
# FastAPI's words for a body it could not read (not UTF-8, nested too deeply for its parser …).
_UNREADABLE_BODY = "There was an error parsing the body"
_DRIVERS = ("asyncpg", "sqlalchemy", "aiosqlite", "sqlite3")


class ApiError(Exception):
    """An error the client can act on; rendered in the one error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    return {"error": {"code": code, "message": message, "details": details}}


def _sqlstate(error: BaseException) -> str:
    for candidate in (error, getattr(error, "orig", None), error.__cause__):
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return ""


def _raised_by_driver(error: BaseException) -> bool:
    """Whether the database driver raised ``error`` (asyncpg raises a refused or reset
    connection as a plain OSError, not as a DBAPIError)."""
    return any(
        str(frame.f_globals.get("__name__", "")).startswith(_DRIVERS)
        for frame, _line in traceback.walk_tb(error.__traceback__)
    )


def database_down(error: BaseException) -> bool:
    """Whether ``error`` means the database cannot be reached now (rather than that a statement
    failed): worth a 503 and a retry, not a 500 and a traceback."""
    if isinstance(error, PoolTimeout):  # every pooled connection busy for pool_timeout
        return True
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    code = _sqlstate(error)
    if code.startswith("08") or code in SERVER_UNAVAILABLE:
        return True
    return isinstance(error, OSError) and _raised_by_driver(error)


# --- the error shape in the OpenAPI document --------------------------------------------------


class ErrorInfo(BaseModel):
    code: str = Field(
        description="machine-readable: bad_request, unauthorized, forbidden, not_found, conflict, "
        "payload_too_large, invalid_request, rate_limited, not_implemented, unavailable, "
        "internal_error …",
        examples=["not_found"],
    )
    message: str = Field(
        description="what went wrong, for people", examples=["no device 'greenhouse-9'"]
    )
    details: Any = Field(
        description="more about it, or null; for invalid requests a list of {field, problem}",
        examples=[None],
    )


class ErrorOut(BaseModel):
    """The body of every error response."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                error_body("not_found", "no device 'greenhouse-9'"),
                error_body(
                    "invalid_request",
                    "the request does not match the schema",
                    [
                        {
                            "field": "query.limit",
                            "problem": "Input should be less than or equal to 1000",
                        }
                    ],
                ),
            ]
        }
    )

    error: ErrorInfo


# status: (what it means, an example message, example details)
_DOCUMENTED: dict[int, tuple[str, str, Any]] = {
    400: ("Malformed request", "a batch is a JSON array of messages", None),
    401: ("No credentials, or invalid, expired or revoked ones", "authentication required", None),
    403: ("The caller's role does not allow this", "this needs the operator role or higher", None),
    404: (
        "Not found (another tenant's resources answer exactly like missing ones)",
        "no device 'greenhouse-9'",
        None,
    ),
    409: ("Conflicts with what exists", "already exists", None),
    413: (
        "The body is larger than TELEMETRA_MAX_REQUEST_BYTES",
        "body of 2097152 bytes exceeds the limit of 1048576 bytes",
        None,
    ),
    422: (
        "The request does not match the schema, or a value in it cannot be read",
        "the request does not match the schema",
        [{"field": "query.limit", "problem": "Input should be greater than or equal to 1"}],
    ),
    429: (
        "Rate limited: retry after Retry-After seconds",
        "too many requests for this user; at most 20/s (bursts of 60)",
        None,
    ),
    501: ("Not available on this server", "not implemented", None),
    503: (
        "Temporarily unavailable: retry after Retry-After seconds",
        "ingest is saturated; retry shortly",
        None,
    ),
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
}


def responses(
    *statuses: int, messages: Mapping[int, str | tuple[str, Any]] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route or router: each status documented with the one error shape
    (``ErrorOut``) and an example; ``messages`` gives a status a more specific example message,
    or (message, details)."""
    documented: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        meaning, message, details = _DOCUMENTED[status]
        specific = (messages or {}).get(status)
        if isinstance(specific, tuple):
            message, details = specific
        elif specific is not None:
            message, details = specific, None
        code = _CODES[status]
        documented[status] = {
            "model": ErrorOut,
            "description": meaning,
            "content": {"application/json": {"example": error_body(code, message, details)}},
        }
        if status in _HEADERS:
            documented[status]["headers"] = _HEADERS[status]
    return documented


def install(app: FastAPI) -> None:
    """Render every error, including validation and unexpected ones, in the one shape."""

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(error.code, error.message, error.details),
            status_code=error.status,
            headers=error.headers,
        )

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 400 and error.detail == _UNREADABLE_BODY:
            cause = error.__cause__
            if isinstance(cause, BaseExceptionGroup):  # raised in a task group while reading
                over, _rest = cause.split(lambda e: isinstance(e, HTTPException))
                if over is not None:
                    return await http_error(_request, _first(over))
            return _unreadable_body(cause)
        return JSONResponse(
            error_body(_CODES.get(error.status_code, "error"), str(error.detail)),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "problem": e.get("msg")}
            for e in error.errors()
        ]
        return JSONResponse(
            error_body("invalid_request", "the request does not match the schema", details),
            status_code=422,
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error", path=request.url.path)
        return JSONResponse(
            error_body("internal_error", "an unexpected error occurred; it has been logged"),
            status_code=500,
        )

    async def unavailable(request: Request, error: Exception) -> JSONResponse:
        # One line per request, no traceback: an outage is not a bug, and a traceback per
        # request would bury the log.
        log.warning(
            "database unavailable",
            method=request.method,
            path=request.url.path,
            error=f"{type(error).__name__}: {error}".splitlines()[0],
        )
        return JSONResponse(
            error_body("unavailable", DATABASE_DOWN),
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_S)},
        )

    @app.exception_handler(OSError)
    async def os_error(request: Request, error: OSError) -> JSONResponse:
        if database_down(error):
            return await unavailable(request, error)
        return await unexpected(request, error)

    @app.exception_handler(PoolTimeout)
    async def pool_timeout(request: Request, error: PoolTimeout) -> JSONResponse:
        return await unavailable(request, error)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, error: DBAPIError) -> JSONResponse:
        if database_down(error):
            return await unavailable(request, error)
        if getattr(error.orig, "sqlstate", None) in UNSTORABLE_TEXT:
            return JSONResponse(
                error_body(
                    "invalid_request",
                    "the request holds text the database cannot store (such as NUL characters)",
                ),
                status_code=422,
            )
        return await unexpected(request, error)


def _unreadable_body(cause: BaseException | None) -> JSONResponse:
    """A body FastAPI could not parse: a 422 in the one shape, like any other unreadable value
    (FastAPI itself would answer 400, which the OpenAPI document does not list)."""
    if isinstance(cause, UnicodeDecodeError):
        problem = "the body is not UTF-8 text"
    elif isinstance(cause, RecursionError):
        problem = "the body is nested too deeply"
    else:
        problem = f"the body cannot be read ({type(cause).__name__})"
    return JSONResponse(
        error_body("invalid_request", problem, [{"field": "body", "problem": problem}]),
        status_code=422,
    )


def _first(group: BaseExceptionGroup[Any]) -> Any:
    """The first leaf exception of a (nested) exception group."""
    found: Any = group
    while isinstance(found, BaseExceptionGroup):
        found = found.exceptions[0]
    return found
