"""Dashboard sign-in: a session cookie the browser's scripts cannot read, with a CSRF token.

``POST /auth/session`` checks a username and password exactly as ``/auth/token`` does (same
limits, same errors) and sets ``telemetra_session``: HttpOnly, SameSite=Strict, Path=/, Secure
when the request came over HTTPS. The database keeps only a SHA-256 hash of the cookie's value.
Requests authenticated by the cookie that may change something carry ``X-CSRF-Token`` (checked
in ``auth.current_caller``). ``DELETE /auth/session`` revokes the session and clears the cookie.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from telemetra.api import errors
from telemetra.api.auth import (
    ROLES,
    SESSION_COOKIE,
    WRONG_CSRF,
    Caller,
    check_csrf,
    check_login,
    password_tag,
    session_cookie,
)
from telemetra.api.errors import ApiError
from telemetra.ingest.timestamps import format_us
from telemetra.store.schema import sessions, tenants, users
from telemetra.store.tenancy import platform_wide, scope_to

router = APIRouter(prefix="/auth", tags=["auth"])

SESSION_EXPIRED = "session expired: sign in again"
ACCOUNT_GONE = "this session's account is disabled or no longer exists: sign in again"
PASSWORD_CHANGED = "the password changed since this session began: sign in again"  # noqa: S105
US = 1_000_000


def _now_us() -> int:
    return time.time_ns() // 1000


def token_hash(token: str) -> str:
    """What the database keeps of a session token."""
    return hashlib.sha256(token.encode()).hexdigest()


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


async def _find(app: Any, token: str) -> Any:
    """The session row with its user's account as stored now, or None."""
    query = (
        select(
            sessions,
            users.c.username,
            users.c.role,
            users.c.disabled,
            users.c.password_hash,
            users.c.tenant_id.label("user_tenant_id"),
        )
        .join(users, users.c.id == sessions.c.user_id)
        .where(sessions.c.token_hash == token_hash(token))
    )
    # Before the tenant is known, like the user at login: platform-wide.
    with platform_wide():
        async with app.state.engine.connect() as conn:
            return (await conn.execute(query)).one_or_none()


def _live(row: Any) -> bool:
    return row is not None and row.revoked_at is None and row.expires_at > _now_us()


async def authenticate_cookie(app: Any, token: str) -> tuple[Caller, Any]:
    """The caller a session cookie stands for and its session row, checked against the account
    as stored now (for requests and for live streams, which check again while they run)."""
    if len(token) > 200:  # a real one is 43 characters
        raise _unauthorized(SESSION_EXPIRED)
    row = await _find(app, token)
    if not _live(row):
        raise _unauthorized(SESSION_EXPIRED)
    app.state.user_limits.check(f"user:{row.user_id}", "user")
    if row.disabled or row.role not in ROLES:
        raise _unauthorized(ACCOUNT_GONE)
    if not secrets.compare_digest(
        row.password_tag, password_tag(app.state.secret_key, row.password_hash)
    ):
        raise _unauthorized(PASSWORD_CHANGED)
    caller = Caller(row.user_id, row.username, row.user_tenant_id, row.role)
    scope_to(None if caller.role == "admin" else caller.tenant_id)
    return caller, row


# --- models -----------------------------------------------------------------------------------


class SignIn(BaseModel):
    """A username and password, as JSON."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"username": "maria", "password": "a long passphrase"}]},
    )

    username: str = Field(min_length=1, max_length=200)
    password: str = Field(
        min_length=1, max_length=1024, json_schema_extra={"format": "password", "writeOnly": True}
    )


class SessionOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"username": "maria", "role": "operator", "tenant_id": 2, "tenant": "acme",
                 "csrf_token": "mJ0q3Jd0y0V8pZbq0zQh6xw7cS2u1oXk9fY4gA5rTnE",
                 "expires_at": "2026-11-22T22:00:00Z"}
            ]
        }
    )  # fmt: skip

    username: str
    role: str = Field(description="viewer, operator, owner or admin")
    tenant_id: int
    tenant: str = Field(description="the tenant's name")
    csrf_token: str = Field(
        description="send as `X-CSRF-Token` with every request other than GET, HEAD and "
        "OPTIONS; `GET /auth/me` says it again"
    )
    expires_at: str = Field(description="when the session ends: sign in again then")


# --- routes -----------------------------------------------------------------------------------


def _cookie_flags(request: Request) -> dict[str, Any]:
    # request.url.scheme is X-Forwarded-Proto's when a trusted proxy sent it (app.py).
    return {
        "path": "/",
        "secure": request.url.scheme == "https",
        "httponly": True,
        "samesite": "strict",
    }


@router.post(
    "/session",
    response_model=SessionOut,
    summary="Sign in to the dashboard (session cookie)",
    responses=errors.responses(
        401, 422, 429, messages={401: "wrong username or password",
                                 429: "too many failed logins; try again later"}
    ),
)  # fmt: skip
async def sign_in(request: Request, response: Response, body: SignIn) -> SessionOut:
    """Check a username and password as `POST /auth/token` does (same limits and errors) and
    set the HttpOnly, SameSite=Strict session cookie `telemetra_session` (Secure over HTTPS),
    valid for `TELEMETRA_SESSION_HOURS`. The answer holds the CSRF token that requests other
    than GET, HEAD and OPTIONS must send as `X-CSRF-Token`."""
    row = await check_login(request, body.username, body.password)
    app = request.app
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = _now_us()
    lifetime_s = round(app.state.settings.session_hours * 3600)
    expires_at = now + lifetime_s * US
    with platform_wide():
        async with app.state.engine.begin() as conn:
            # The user's sessions that ended are of no more use.
            await conn.execute(
                sessions.delete().where(sessions.c.user_id == row.id, sessions.c.expires_at <= now)
            )
            await conn.execute(
                sessions.insert().values(
                    token_hash=token_hash(token), user_id=row.id, tenant_id=row.tenant_id,
                    csrf_token=csrf, password_tag=password_tag(app.state.secret_key,
                                                               row.password_hash),
                    created_at=now, expires_at=expires_at,
                )
            )  # fmt: skip
            tenant = await conn.scalar(select(tenants.c.name).where(tenants.c.id == row.tenant_id))
    response.set_cookie(SESSION_COOKIE, token, max_age=lifetime_s, **_cookie_flags(request))
    return SessionOut(
        username=row.username, role=row.role, tenant_id=row.tenant_id, tenant=str(tenant),
        csrf_token=csrf, expires_at=format_us(expires_at),
    )  # fmt: skip


@router.delete(
    "/session",
    status_code=204,
    summary="Sign out of the dashboard",
    responses=errors.responses(403, 429, messages={403: WRONG_CSRF}),
)
async def sign_out(
    request: Request, cookie: Annotated[str | None, Depends(session_cookie)]
) -> Response:
    """Revoke the session of the cookie (the request carries its `X-CSRF-Token`) and clear the
    cookie. Without a cookie, or with one whose session has ended, it only clears the cookie."""
    row: Any = await _find(request.app, cookie) if cookie and len(cookie) <= 200 else None
    if _live(row):
        request.app.state.user_limits.check(f"user:{row.user_id}", "user")
        check_csrf(request, row.csrf_token)
        with platform_wide():
            async with request.app.state.engine.begin() as conn:
                await conn.execute(
                    sessions.update()
                    .where(sessions.c.id == row.id, sessions.c.revoked_at.is_(None))
                    .values(revoked_at=_now_us())
                )
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, **_cookie_flags(request))
    return response
