"""Users and tokens: argon2 password hashes, short-lived JWTs, roles on every endpoint."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Any

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError
from fastapi import APIRouter, Depends, Request
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel
from sqlalchemy import select

from telemetra.api.errors import ApiError
from telemetra.store.schema import users
from telemetra.store.tenancy import scope_to

ROLES = ("viewer", "operator", "owner", "admin")  # each includes the rights of those before
ALGORITHM = "HS256"
ISSUER = "telemetra"
_hasher = PasswordHasher()
# A hash to verify against when the user does not exist, so both cases take as long.
_DUMMY_HASH = _hasher.hash("not a real password")

router = APIRouter(prefix="/auth", tags=["auth"])
bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)


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


def issue_token(secret: str, caller: Caller, ttl_s: int) -> str:
    """A signed access token (explicit algorithm, issuer, expiry)."""
    now = int(time.time())
    claims = {
        "sub": str(caller.user_id),
        "name": caller.username,
        "tenant": caller.tenant_id,
        "role": caller.role,
        "iss": ISSUER,
        "iat": now,
        "exp": now + ttl_s,
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def read_token(secret: str, token: str) -> Caller:
    """Verify a token; ``alg: none``, other keys, tampering and expiry are all refused."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={"require": ["exp", "iss", "sub"]},
        )
        return Caller(
            int(claims["sub"]), str(claims["name"]), int(claims["tenant"]), claims["role"]
        )
    except (jwt.PyJWTError, KeyError, ValueError, TypeError):
        raise ApiError(
            401,
            "invalid or expired token; get a new one at /api/v1/auth/token",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None


async def current_caller(request: Request, token: Annotated[str | None, Depends(bearer)]) -> Caller:
    """The caller of this request, from its bearer token."""
    if token is None:
        raise ApiError(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    claimed = read_token(request.app.state.secret_key, token)
    request.app.state.user_limits.check(f"user:{claimed.user_id}", "user")
    # The account as stored now: a deleted or disabled user's token stops working at once,
    # and a changed role or tenant applies to tokens already issued.
    async with request.app.state.engine.connect() as conn:
        row = (await conn.execute(select(users).where(users.c.id == claimed.user_id))).one_or_none()
    if row is None or row.disabled or row.username != claimed.username or row.role not in ROLES:
        raise ApiError(
            401,
            "this token's account is disabled or no longer exists",
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


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int


class MeOut(BaseModel):
    id: int
    username: str
    tenant_id: int
    role: str


@router.post("/token", response_model=TokenOut, summary="Log in (OAuth2 password form)")
async def login(
    request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> TokenOut:
    """Exchange a username and password for a short-lived bearer token."""
    async with request.app.state.engine.connect() as conn:
        row = (
            await conn.execute(select(users).where(users.c.username == form.username))
        ).one_or_none()
    stored = row.password_hash if row is not None and not row.disabled else _DUMMY_HASH
    # argon2 takes ~100 ms of CPU on purpose: off the event loop.
    matches = await asyncio.to_thread(password_matches, form.password, stored)
    if not matches or row is None or row.disabled:
        raise ApiError(401, "wrong username or password", headers={"WWW-Authenticate": "Bearer"})
    caller = Caller(row.id, row.username, row.tenant_id, row.role)
    ttl = request.app.state.settings.token_ttl_s
    return TokenOut(
        access_token=issue_token(request.app.state.secret_key, caller, ttl), expires_in=ttl
    )


@router.get("/me", response_model=MeOut)
async def me(caller: Annotated[Caller, Depends(current_caller)]) -> MeOut:
    """Who the token belongs to."""
    return MeOut(
        id=caller.user_id, username=caller.username, tenant_id=caller.tenant_id, role=caller.role
    )
