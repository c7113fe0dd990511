"""Fixtures for API tests: two tenants with an owner, operator and viewer each, logged in."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api.app import create_app
from telemetra.api.auth import hash_password
from telemetra.config import Settings
from telemetra.store.catalog import create_tenant, create_user
from telemetra.store.tenancy import platform_wide

SECRET = "tests-only-signing-key-4f9c2a7e1b8d6053"  # 32+ characters, not trivial
PASSWORD = "correct horse battery staple"
_HASH = hash_password(PASSWORD)  # argon2 is slow on purpose: hash once for all users


@dataclass
class World:
    client: httpx.AsyncClient
    tenant_a: str
    tenant_b: str
    tokens: dict[str, str]  # "a-operator" -> bearer token
    app: Any = None  # the FastAPI app behind ``client``

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


async def make_world(
    engine: AsyncEngine,
    db_url: str,
    data_dir: Path | None = None,
    mqtt_url: str | None = None,
    **settings_: Any,
) -> AsyncIterator[World]:
    """An app on ``engine`` with tenants a and b, each with a logged-in owner, operator, viewer."""
    settings = Settings(
        database_url=db_url, secret_key=SECRET, max_request_bytes=4096,
        data_dir=data_dir or Path(tempfile.mkdtemp(prefix="telemetra-api-")),
        mqtt_url=mqtt_url or "mqtt://127.0.0.1:1", **settings_,
    )  # fmt: skip
    app = create_app(settings, engine)
    tag = uuid.uuid4().hex[:8]
    names = {"a": f"a-{tag}", "b": f"b-{tag}"}
    with platform_wide():  # set-up, as the CLI would: the app's engine itself fails closed
        async with engine.begin() as conn:
            for key, name in names.items():
                tenant_id = await create_tenant(conn, name)
                for role in ("owner", "operator", "viewer"):
                    await create_user(conn, tenant_id, f"{key}-{role}-{tag}", _HASH, role)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        tokens = {}
        for key in names:
            for role in ("owner", "operator", "viewer"):
                reply = await client.post(
                    "/api/v1/auth/token",
                    data={"username": f"{key}-{role}-{tag}", "password": PASSWORD},
                )
                assert reply.status_code == 200, reply.text
                tokens[f"{key}-{role}"] = reply.json()["access_token"]
        yield World(client, names["a"], names["b"], tokens, app)


def assert_error(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) == {"error"} and body["error"]["code"] == code
    assert body["error"]["message"]
