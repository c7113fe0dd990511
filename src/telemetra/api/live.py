"""The live stream: committed readings (and status and alert events) as they happen, over a
WebSocket or Server-Sent Events, filtered, scoped to the caller's tenant (admins: all).

A stream ends when its token (or sign-in session) expires, and within a minute of the account
being disabled, deleted or its password changed, or the session revoked (the account is checked
again while the stream runs). Browsers of the dashboard authenticate with the session cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

import jwt
import orjson
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.websockets import WebSocketState

from telemetra.api import errors
from telemetra.api.auth import SESSION_COOKIE, Caller, authenticate, bearer, session_cookie
from telemetra.api.errors import ApiError
from telemetra.live import Bus, Filter, Subscription, parse_filter

router = APIRouter(tags=["live"])

HEARTBEAT_S = 15.0  # SSE comment this often: proxies keep an idle stream open
RECHECK_S = 60.0  # the account is checked again this often
AUTH_WAIT_S = 10.0  # a WebSocket without a token in its request sends one within this time
# WebSocket close codes: 4000 + the HTTP status that would say the same.
CLOSE_BAD_REQUEST, CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN, CLOSE_RATE_LIMITED = 4400, 4401, 4403, 4429

_SSE_EXAMPLE = (
    ": connected\n\n"
    'event: readings\ndata: {"type":"readings","device":"freezer-1","points":'
    '[{"metric":"temperature","ts":"2026-11-22T10:00:00Z","value":-18.5}]}\n\n'
    ": heartbeat\n\n"
    'event: gap\ndata: {"type":"gap","dropped":1200,"reason":"slow_client"}\n\n'
)

DevicesParam = Annotated[
    str | None,
    Query(description="only these devices, comma-separated (absent: all of the tenant's)",
          examples=["freezer-1,freezer-2"]),
]  # fmt: skip
MetricsParam = Annotated[
    str | None,
    Query(description="only readings (and alerts) of these metrics, comma-separated",
          examples=["temperature"]),
]  # fmt: skip
TypesParam = Annotated[
    str | None,
    Query(description="event types, comma-separated: readings, status, alert (absent: all)",
          examples=["readings,alert"]),
]  # fmt: skip
TokenParam = Annotated[
    str | None,
    Query(alias="token", description="the user token, for clients that cannot send headers "
          "(a browser's EventSource); never written to the access log. Prefer the "
          "Authorization header"),
]  # fmt: skip


def _filter(devices: str | None, metrics: str | None, types: str | None) -> Filter:
    try:
        return parse_filter(devices, metrics, types)
    except ValueError as error:
        field = str(error).split(":", 1)[0]
        raise ApiError(422, str(error), details=[{"field": field, "problem": str(error)}]) from None


def _expires_at(token: str) -> float:
    """The token's expiry (already verified by ``authenticate``)."""
    claims = jwt.decode(token, options={"verify_signature": False})
    return float(claims["exp"])


class Session:
    """An authenticated stream: who, until when, checked again now and then."""

    def __init__(
        self,
        caller: Caller,
        expires_at: float,
        check: Callable[[], Awaitable[object]],
        expired: str = "token expired; reconnect with a new token",
    ) -> None:
        self.caller = caller
        self.expires_at = expires_at
        self.check = check  # authenticates again; raises ApiError when it no longer holds
        self.expired = expired
        self.checked_at = time.monotonic()

    @classmethod
    async def open(cls, app: Any, token: str) -> Session:
        """From a user token."""
        caller = await authenticate(app, token)
        return cls(caller, _expires_at(token), lambda: authenticate(app, token))

    @classmethod
    async def from_cookie(cls, app: Any, cookie: str) -> Session:
        """From the dashboard's session cookie."""
        from telemetra.api.session import SESSION_EXPIRED, authenticate_cookie

        caller, row = await authenticate_cookie(app, cookie)
        check = lambda: authenticate_cookie(app, cookie)  # noqa: E731
        return cls(caller, row.expires_at / 1e6, check, SESSION_EXPIRED)

    @property
    def tenant(self) -> int | None:
        """The tenant streamed: None (all) for a platform admin."""
        return None if self.caller.role == "admin" else self.caller.tenant_id

    async def still_valid(self) -> str | None:
        """None while the stream may go on; else why it ends."""
        if time.time() >= self.expires_at:
            return self.expired
        if time.monotonic() - self.checked_at >= RECHECK_S:
            self.checked_at = time.monotonic()
            try:
                await self.check()
            except ApiError as error:
                if error.status == 401:
                    return error.message
            except Exception:  # noqa: S110 - the database away: keep streaming, check later
                pass
        return None


async def _open(app: Any, credential: Credential) -> Session:
    is_cookie, value = credential
    return await (Session.from_cookie if is_cookie else Session.open)(app, value)


def _bus(app: Any) -> Bus:
    bus: Bus = app.state.live
    return bus


# --- Server-Sent Events -------------------------------------------------------------------


Credential = tuple[bool, str]  # (is the session cookie, its value)


async def _sse_credential(
    header: Annotated[str | None, Depends(bearer)],
    cookie: Annotated[str | None, Depends(session_cookie)],
    query: TokenParam = None,
) -> Credential:
    """The Authorization header, ``?token=``, else the dashboard's session cookie."""
    token = header or query
    if token:
        return False, token
    if cookie:
        return True, cookie
    raise ApiError(
        401, "authentication required: Authorization: Bearer <token>, ?token= for "
        "EventSource, or the dashboard's session cookie", headers={"WWW-Authenticate": "Bearer"},
    )  # fmt: skip


def _sse(frames: list[tuple[str, str]]) -> str:
    return "".join(f"event: {kind}\ndata: {text}\n\n" for kind, text in frames)


@router.get(
    "/live",
    summary="Follow readings live (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "An endless `text/event-stream`: `event:` is the frame's type, "
            "`data:` one JSON object; a comment line every 15 s keeps proxies from closing it",
            "content": {"text/event-stream": {"schema": {"type": "string"},
                                              "example": _SSE_EXAMPLE}},
        },
        **errors.responses(422, 429),
    },
)  # fmt: skip
async def live_sse(
    request: Request,
    credential: Annotated[Credential, Depends(_sse_credential)],
    devices: DevicesParam = None,
    metrics: MetricsParam = None,
    types: TypesParam = None,
) -> StreamingResponse:
    """Committed readings of the caller's tenant (a platform admin: every tenant) as they are
    stored, one `readings` frame per device and commit; later `status` and `alert` events.
    A client too slow to keep up gets a `gap` frame saying how many frames it missed, then
    newer ones. The stream ends when the token or session expires: reconnect with a new one."""
    flt = _filter(devices, metrics, types)
    session = await _open(request.app, credential)
    bus = _bus(request.app)

    async def stream() -> AsyncIterator[str]:
        async with bus.following(session.tenant, flt) as sub:
            yield ": connected\n\n"  # subscribed: what is committed from now on comes
            while (await session.still_valid()) is None:
                frames = await sub.next(HEARTBEAT_S)
                yield _sse(frames) if frames else ": heartbeat\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},  # nginx: no buffer
    )


# --- WebSocket ------------------------------------------------------------------------------


async def _ws_session(websocket: WebSocket, query_token: str | None) -> Session | None:
    """Authenticate from the Authorization header, ``?token=``, the dashboard's session cookie
    (sent by a page of this site only), or (after accepting) a first message
    ``{"token": "..."}``; closes the socket and returns None when that fails."""
    header = websocket.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else query_token
    cookie = websocket.cookies.get(SESSION_COOKIE)
    try:
        if token:
            return await Session.open(websocket.app, token)
        if cookie:
            if not _same_origin(websocket):
                await _close(websocket, CLOSE_FORBIDDEN, CROSS_ORIGIN)
                return None
            return await Session.from_cookie(websocket.app, cookie)
        await websocket.accept()
        async with asyncio.timeout(AUTH_WAIT_S):
            first = await websocket.receive_text()
        sent = orjson.loads(first)
        if not isinstance(sent, dict) or not isinstance(sent.get("token"), str):
            raise ValueError
        return await Session.open(websocket.app, sent["token"])
    except ApiError as error:
        code = CLOSE_RATE_LIMITED if error.status == 429 else CLOSE_UNAUTHORIZED
        await _close(websocket, code, error.message)
    except (TimeoutError, ValueError, orjson.JSONDecodeError):
        await _close(
            websocket, CLOSE_UNAUTHORIZED,
            'authentication required: Authorization header, ?token=, or a first message '
            '{"token": "..."}',
        )  # fmt: skip
    except WebSocketDisconnect:
        pass
    return None


CROSS_ORIGIN = "the session cookie is accepted from pages of this site only"


def _same_origin(websocket: WebSocket) -> bool:
    """Whether a browser's Origin (if any) is this site: a page elsewhere must not open a
    stream with the user's cookie (cross-site WebSocket hijacking). Behind a proxy the site's
    host may be in X-Forwarded-Host (a browser cannot set that header on a WebSocket)."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return True  # not a browser: it holds the cookie itself
    hosts = {websocket.headers.get("host", "")}
    hosts |= {h.strip() for h in websocket.headers.get("x-forwarded-host", "").split(",")}
    return urlsplit(origin).netloc in hosts - {""}


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    if websocket.application_state == WebSocketState.CONNECTING:
        await websocket.accept()  # so that the client sees the code and the reason
    if websocket.application_state == WebSocketState.CONNECTED:
        with contextlib.suppress(Exception):  # the client may be gone already
            await websocket.close(code, reason[:120])


async def _send(websocket: WebSocket, sub: Subscription, session: Session) -> str:
    """Send frames until the session ends; returns why."""
    while (why := await session.still_valid()) is None:
        for _, text in await sub.next(HEARTBEAT_S):
            await websocket.send_text(text)
    return why


async def _receive(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it goes."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass


@router.websocket("/live")
async def live_ws(
    websocket: WebSocket,
    devices: str | None = None,
    metrics: str | None = None,
    types: str | None = None,
    token: str | None = None,
) -> None:
    """The live stream over a WebSocket: one JSON frame per text message (see ``live_sse``)."""
    try:
        flt = parse_filter(devices, metrics, types)
    except ValueError as error:
        await _close(websocket, CLOSE_BAD_REQUEST, str(error))
        return
    session = await _ws_session(websocket, token)
    if session is None:
        return
    async with _bus(websocket.app).following(session.tenant, flt) as sub:
        if websocket.application_state == WebSocketState.CONNECTING:
            await websocket.accept()  # subscribed first: what is committed from now on comes
        sending = asyncio.create_task(_send(websocket, sub, session))
        receiving = asyncio.create_task(_receive(websocket))
        try:
            done, _ = await asyncio.wait({sending, receiving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sending, receiving):
                task.cancel()
            await asyncio.gather(sending, receiving, return_exceptions=True)
        if sending in done and not sending.cancelled() and sending.exception() is None:
            await _close(websocket, CLOSE_UNAUTHORIZED, sending.result())
