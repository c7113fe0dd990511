"""Users and tokens: argon2 password hashes, short-lived JWTs or a dashboard session cookie,
roles on every endpoint."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import APIRouter, Depends, Form, Request
from fastapi.security import APIKeyCookie, OAuth2PasswordBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from telemetra.api import errors
from telemetra.api.errors import ApiError
from telemetra.store.schema import tenants, users
from telemetra.store.tenancy import platform_wide, scope_to

ROLES = ("viewer", "operator", "owner", "admin")  # each includes the rights of those before
ALGORITHM = "HS256"
ISSUER = "telemetra"
_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so both cases take as long.
_DUMMY_HASH = _hasher.hash("not a real password")

router = APIRouter(prefix="/auth", tags=["auth"])
bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)
SESSION_COOKIE = "telemetra_session"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WRONG_CSRF = f"missing or wrong {CSRF_HEADER}"
session_cookie = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="SessionCookie",
    description="the dashboard's sign-in session (`POST /api/v1/auth/session`); requests other "
    f"than GET, HEAD and OPTIONS must also send the session's `{CSRF_HEADER}`",
    auto_error=False,
)


def hash_password(password: str) -> str:
    """An argon2id hash of a user password."""
    return _hasher.hash(password)


def password_matches(password: str, stored: str) -> bool:
    """Check a password against its argon2 hash."""
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated user of a request: who, in which tenant, with which role."""

    user_id: int
    username: str
    tenant_id: int
    role: str

    def at_least(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def password_tag(secret: str, password_hash: str) -> str:
    """A keyed fingerprint of the stored password hash: tokens carry it, so changing the
    password ends every token issued before (it reveals nothing of the password)."""
    digest = hmac.new(secret.encode(), password_hash.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:12]).decode()


def issue_token(secret: str, caller: Caller, ttl_s: int, password_hash: str) -> str:
    """A signed access token (explicit algorithm, issuer, expiry), bound to the password."""
    now = int(time.time())
    claims = {
        "sub": str(caller.user_id),
        "pwd": password_tag(secret, password_hash),
        "name": caller.username,
        "tenant": caller.tenant_id,
        "role": caller.role,
        "iss": ISSUER,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(secret: str, token: str) -> tuple[Caller, str]:
    """Verify a token: (caller, password tag). ``alg: none``, other keys, tampering and expiry
    are all refused."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iss", "sub", "pwd"]},
        )
        caller = Caller(
            int(claims["sub"]), str(claims["name"]), int(claims["tenant"]), claims["role"]
        )
        return caller, str(claims["pwd"])
    except (jwt.PyJWTError, KeyError, ValueError, TypeError):
        raise ApiError(
            401,
            "invalid or expired token; get a new one at /api/v1/auth/token",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


async def current_caller(
    request: Request,
    token: Annotated[str | None, Depends(bearer)],
    cookie: Annotated[str | None, Depends(session_cookie)],
) -> Caller:
    """The caller of this request, from its bearer token, else from its session cookie (then
    a request that may change something must carry the session's CSRF token too)."""
    if token is not None:
        return await authenticate(request.app, token)
    if not cookie:
        raise ApiError(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    from telemetra.api.session import authenticate_cookie  # session.py imports this module

    caller, session = await authenticate_cookie(request.app, cookie)
    if request.method not in SAFE_METHODS:
        check_csrf(request, session.csrf_token)
    request.state.session = session
    return caller


def check_csrf(request: Request, expected: str) -> None:
    """403 unless the request's X-CSRF-Token is the session's."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), expected.encode()):
        raise ApiError(403, WRONG_CSRF)


async def authenticate(app: Any, token: str) -> Caller:
    """The caller a user token stands for, checked against the account as stored now (for
    requests and for live streams, which check again while they run)."""
    secret = app.state.secret_key
    claimed, tag = read_token(secret, token)
    app.state.user_limits.check(f"user:{claimed.user_id}", "user")
    # The account as stored now: a deleted or disabled user's token stops working at once,
    # a changed role or tenant applies to tokens already issued, and a changed password
    # ends the tokens issued before it. Whichever tenant holds it now: platform-wide.
    with platform_wide():
        async with app.state.engine.connect() as conn:
            row = (
                await conn.execute(select(users).where(users.c.id == claimed.user_id))
            ).one_or_none()
    if row is None or row.disabled or row.username != claimed.username or row.role not in ROLES:
        raise ApiError(
            401,
            "this token's account is disabled or no longer exists",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not hmac.compare_digest(tag, password_tag(secret, row.password_hash)):
        raise ApiError(
            401,
            "the password changed since this token was issued; log in again",
            headers={"WWW-Authenticate": "Bearer"},
        )
    caller = Caller(row.id, row.username, row.tenant_id, row.role)
    # Row-Level Security beneath the application's own scoping (PostgreSQL).
    scope_to(None if caller.role == "admin" else caller.tenant_id)
    return caller


def role(minimum: str) -> Any:
    """A dependency that admits callers with ``minimum`` role or higher."""

    async def check(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
        if not caller.at_least(minimum):
            raise ApiError(403, f"this needs the {minimum} role or higher")
        return caller

    return Depends(check)


class LoginForm(BaseModel):
    """OAuth2's password grant as an HTML form (``application/x-www-form-urlencoded``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"grant_type": "password", "username": "maria", "password": "a long passphrase"}
            ]
        }
    )

    grant_type: str | None = Field(None, pattern="^password$", description="password, or absent")
    username: str = Field(examples=["maria"])
    password: str = Field(json_schema_extra={"format": "password"})
    scope: str = Field("", description="ignored: the account's role decides")
    client_id: str | None = Field(None, description="ignored")
    client_secret: str | None = Field(
        None, description="ignored", json_schema_extra={"format": "password"}
    )


class AccessTokenOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiI3IiwicHdkIjoi"
                    "c0hhNkJwVzc1VV82WmxTbyIsIm5hbWUiOiJtYXJpYSIsInRlbmFudCI6Miwicm9sZSI6Im9wZXJh"
                    "dG9yIiwiaXNzIjoidGVsZW1ldHJhIiwiaWF0IjoxNzk1MzQxNjAwLCJleHAiOjE3OTUzNDUyMDB9."
                    "agcr-ytpg_DLClLJ_F3HpKxlx0bVq3LHZ_ha2TF_-Xs",
                    "token_type": "bearer",
                    "expires_in": 3600,
                }
            ]
        }
    )

    access_token: str = Field(description="send as `Authorization: Bearer <access_token>`")
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="seconds until the token expires")


class MeOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 7, "username": "maria", "tenant_id": 2, "tenant": "acme",
                 "role": "operator"},
                {"id": 7, "username": "maria", "tenant_id": 2, "tenant": "acme",
                 "role": "operator", "csrf_token": "mJ0q3Jd0y0V8pZbq0zQh6xw7cS2u1oXk9fY4gA5rTnE"},
            ]
        }
    )  # fmt: skip

    id: int
    username: str
    tenant_id: int
    tenant: str = Field(description="the tenant's name")
    role: str = Field(description="viewer, operator, owner or admin")
    csrf_token: str | None = Field(
        None,
        description=f"only when signed in by the session cookie: send it as `{CSRF_HEADER}` "
        "with every request other than GET, HEAD and OPTIONS",
    )


@router.post(
    "/token",
    response_model=AccessTokenOut,
    summary="Log in (OAuth2 password form)",
    responses=errors.responses(
        401, 422, 429, messages={401: "wrong username or password",
                                 429: "too many failed logins; try again later"}
    ),
)  # fmt: skip
async def login(request: Request, form: Annotated[LoginForm, Form()]) -> AccessTokenOut:
    """Exchange a username and password for a short-lived bearer token (the Authorize button
    of /docs uses this). Failed attempts are limited per username
    (``TELEMETRA_LOGIN_FAILURES_PER_MIN``, after a burst of 10) and, far more loosely, per
    client address (``TELEMETRA_LOGIN_FAILURES_PER_ADDRESS_PER_MIN``, after a burst of 100;
    behind a reverse proxy the address comes from X-Forwarded-For when the proxy is in
    ``TELEMETRA_TRUSTED_PROXIES``): 429 with Retry-After."""
    row = await check_login(request, form.username, form.password)
    caller = Caller(row.id, row.username, row.tenant_id, row.role)
    ttl = request.app.state.settings.token_ttl_s
    token = issue_token(request.app.state.secret_key, caller, ttl, row.password_hash)
    return AccessTokenOut(access_token=token, expires_in=ttl)


async def check_login(request: Request, username: str, password: str) -> Any:
    """The user row for a username and password (token and session logins alike); 401 for a
    wrong pair or a disabled user, 429 while failures are limited."""
    state = request.app.state
    address = request.client.host if request.client else ""
    limits = ((state.login_failures, username), (state.address_login_failures, address))
    wait = max(limiter.waiting(key) for limiter, key in limits)
    if wait > 0:  # before any argon2 work: guessing costs the guesser, not the server
        raise ApiError(
            429,
            "too many failed logins; try again later",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    with platform_wide():  # the user is found by name alone, before any tenant is known
        async with request.app.state.engine.connect() as conn:
            row = (
                await conn.execute(select(users).where(users.c.username == username))
            ).one_or_none()
    stored = row.password_hash if row is not None and not row.disabled else _DUMMY_HASH
    # argon2 takes ~100 ms of CPU on purpose: off the event loop.
    matches = await asyncio.to_thread(password_matches, password, stored)
    if not matches or row is None or row.disabled:
        for limiter, key in limits:
            limiter.retry_after(key)  # count the failure
        raise ApiError(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    return row


@router.get(
    "/me",
    response_model=MeOut,
    response_model_exclude_none=True,
    summary="Who am I",
    responses=errors.responses(429),
)
async def me(request: Request, caller: Annotated[Caller, Depends(current_caller)]) -> MeOut:
    """Who the token or session belongs to: the account as it is now; with the session
    cookie also the session's CSRF token (a reloaded dashboard page reads it here)."""
    session = getattr(request.state, "session", None)
    async with request.app.state.engine.connect() as conn:  # the caller's own tenant: in scope
        tenant = await conn.scalar(select(tenants.c.name).where(tenants.c.id == caller.tenant_id))
    return MeOut(
        id=caller.user_id, username=caller.username, tenant_id=caller.tenant_id,
        tenant=str(tenant), role=caller.role,
        csrf_token=None if session is None else session.csrf_token,
    )  # fmt: skip
