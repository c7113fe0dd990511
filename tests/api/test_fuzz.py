"""Schema-driven fuzzing: every operation of the OpenAPI document, bounded and deterministic.

Schemathesis reads /openapi.json from the in-process app (ASGI, no network) and sends generated
requests, valid (positive) and invalid (negative), to every operation: as a tenant owner (bearer
token) for the user API and with a device token (X-API-Key) for ingest. No answer may be a 500,
and every 4xx/5xx body must have the one error shape ``{"error": {"code", "message", "details"}}``.

Schemathesis runs the app on its own event loop in another thread, so the app opens its own
engine there. The operations are listed at collection time (one test each, per database and
generation mode); schemathesis' lazy pytest loader is not used (it breaks on pytest 9.2).
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from telemetra.api.app import create_app
from telemetra.api.auth import Caller, issue_token
from telemetra.config import Settings
from telemetra.store.catalog import create_device, create_tenant, create_user
from telemetra.store.database import open_database

from api_fixtures import _HASH, SECRET, World, assert_error
from conftest import app_role_url

# Per operation and generation mode; raise it locally for a deeper run.
MAX_EXAMPLES = int(os.environ.get("TELEMETRA_FUZZ_EXAMPLES", "15"))
INGEST_PATHS = ("/api/v1/ingest", "/api/v1/ingest/batch", "/api/v1/{device_token}/telemetry")


def _operations() -> list[str]:
    """ "METHOD /path" of every operation in the document (building the app opens nothing)."""
    app = create_app(Settings(secret_key=SECRET, data_dir=Path(tempfile.gettempdir())))
    paths = app.openapi()["paths"]
    return sorted(
        f"{method.upper()} {path}"
        for path, item in paths.items()
        for method in item
        # An endless event stream: a valid request never ends, which a fuzzer cannot read;
        # its refusals (tokens, filters) are tests/api/test_live.py's.
        if (method, path) != ("get", "/api/v1/live")
    )


OPERATIONS = _operations()


@dataclass
class Fuzzed:
    schema: schemathesis.BaseSchema
    owner_token: str
    device_token: str
    device_uid: str  # the device behind device_token, with some readings
    spare_uid: str  # another device, for edits (reads go to device_uid)

    def prepare(self, case: schemathesis.Case) -> None:
        """Real credentials on every request (generated ones would only ever get a 401), and
        real devices for reads and edits (a generated uid would only ever get a 404)."""
        if "{uid}" in case.path:
            uid = self.device_uid if case.method == "GET" else None
            if case.method == "PATCH" or case.path.endswith("/certificate"):
                uid = self.spare_uid  # deleting or re-keying a real device is left to chance
            if uid is not None:
                case.path_parameters = {**(case.path_parameters or {}), "uid": uid}
        drop = {"authorization", "x-api-key"}
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in drop}
        if case.path not in INGEST_PATHS:
            headers["Authorization"] = f"Bearer {self.owner_token}"
        elif "{device_token}" in case.path:
            case.path_parameters = {
                **(case.path_parameters or {}),
                "device_token": self.device_token,
            }
        else:
            headers["X-API-Key"] = self.device_token
        case.headers = headers


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_url(request: pytest.FixtureRequest) -> str:
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="module")
async def fuzzed(fuzz_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fuzzed]:
    """A tenant with an owner (whose token the fuzzer uses), other users and two devices."""
    tag = uuid.uuid4().hex[:8]
    engine = await open_database(fuzz_url, migrate_schema=False)
    try:
        async with engine.begin() as conn:
            tenant_id = await create_tenant(conn, f"fuzz-{tag}")
            owner_id = await create_user(conn, tenant_id, f"fuzz-owner-{tag}", _HASH, "owner")
            for role in ("operator", "viewer"):
                await create_user(conn, tenant_id, f"fuzz-{role}-{tag}", _HASH, role)
            await create_device(conn, tenant_id, f"fuzz-spare-{tag}", type="climate")
            device_token = await create_device(conn, tenant_id, f"fuzz-sensor-{tag}")
    finally:
        await engine.dispose()
    # On PostgreSQL the app connects as an ordinary role: RLS applies beneath the fuzzing.
    app_url = await app_role_url(fuzz_url) if fuzz_url.startswith("postgresql") else fuzz_url
    app = create_app(
        Settings(
            database_url=app_url, secret_key=SECRET, data_dir=tmp_path_factory.mktemp("fuzz"),
            rate_limit_device_per_s=0, rate_limit_user_per_s=0, max_request_bytes=64 * 1024,
        )
    )  # fmt: skip
    owner = issue_token(
        SECRET, Caller(owner_id, f"fuzz-owner-{tag}", tenant_id, "owner"), 3600, _HASH
    )
    try:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        with asgi.get_client(app) as client:
            now_ms = int(time.time() * 1000)
            for i in range(10):
                reading = {"ts": now_ms - i * 60_000, "values": {"temperature": 20 + i, "rh": 40}}
                reply = client.post(
                    "/api/v1/ingest", json=reading, headers={"X-API-Key": device_token}
                )
                assert reply.status_code == 200 and reply.json()["accepted"] == 2, reply.text
        yield Fuzzed(schema, owner, device_token, f"fuzz-sensor-{tag}", f"fuzz-spare-{tag}")
    finally:
        asgi.shutdown_lifespans()  # close the app's engine before the database goes away


def error_shape(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> None:
    """Every 4xx/5xx answer is ``{"error": {"code": str, "message": str, "details": ...}}``."""
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(f"{response.status_code} without a JSON body") from None
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(body) == {"error"}, f"not the error shape: {body!r}"
    assert set(error) == {"code", "message", "details"}, f"not the error shape: {body!r}"
    assert isinstance(error["code"], str) and error["code"], f"no error code: {body!r}"
    assert isinstance(error["message"], str) and error["message"], f"no message: {body!r}"


@pytest.mark.parametrize("mode", list(GenerationMode), ids=str)
@pytest.mark.parametrize("label", OPERATIONS)
def test_no_server_errors_and_one_error_shape(
    fuzzed: Fuzzed, label: str, mode: GenerationMode
) -> None:
    method, path = label.split(" ", 1)
    operation = fuzzed.schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests on every run: CI stays deterministic
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure stays cheap
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        fuzzed.prepare(case)
        case.call_and_validate(checks=[not_a_server_error, error_shape])

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise
        # Nothing here can be invalid (say, one string path parameter): no negative requests.


async def test_what_the_fuzzer_found_is_a_clear_4xx(world: World, db_url: str) -> None:
    """Requests that were 500s: ids and offsets beyond 64 bits, a null status, a folder of
    zones as time zone, and (PostgreSQL) NUL characters the database cannot store."""
    c, owner, huge = world.client, world.auth("a-owner"), 2**64
    assert_error(
        await c.get(f"/api/v1/tenants?offset={huge}", headers=owner), 422, "invalid_request"
    )
    assert_error(
        await c.get(f"/api/v1/devices?offset={huge}", headers=owner), 422, "invalid_request"
    )
    assert_error(await c.delete(f"/api/v1/users/{huge}", headers=owner), 422, "invalid_request")
    uid = f"fuzz-{uuid.uuid4().hex[:8]}"
    created = await c.post("/api/v1/devices", json={"uid": uid}, headers=owner)
    assert created.status_code == 201, created.text
    for patch in ({"status": None}, {"timezone": "America"}, {"type": "x" * 65}):
        reply = await c.patch(f"/api/v1/devices/{uid}", json=patch, headers=owner)
        assert_error(reply, 422, "invalid_request")
    nul = [
        await c.get("/api/v1/tenants", params={"q": "a\x00"}, headers=owner),
        await c.get("/api/v1/telemetry/latest", params={"metric": "a\x00"}, headers=owner),
        await c.patch(f"/api/v1/devices/{uid}", json={"name": "a\x00"}, headers=owner),
    ]
    for reply in nul:
        if db_url.startswith("postgresql"):
            assert_error(reply, 422, "invalid_request")
        else:
            assert reply.status_code == 200, reply.text  # SQLite stores NUL characters


# --- device metadata: the bounds, against an independent measure -----------------------------

_TEXT = st.characters(blacklist_characters="\x00")  # NUL is refused on its own (below)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(_TEXT, max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(_TEXT, max_size=3),
                                                                 inner, max_size=3),
    max_leaves=40,
)  # fmt: skip


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


@given(st.dictionaries(st.text(_TEXT, max_size=3), _JSON, max_size=4), st.integers(0, 12))
@settings(max_examples=300, deadline=None)
def test_metadata_bounds_match_an_independent_depth(metadata: dict[str, Any], wrap: int) -> None:
    from telemetra.store.catalog import METADATA_MAX_DEPTH, metadata_problem

    for _ in range(wrap):
        metadata = {"w": [metadata]}  # two levels per wrap
    problem = metadata_problem(metadata)
    if _depth(metadata) > METADATA_MAX_DEPTH:
        assert problem is not None and "nested deeper" in problem
    else:
        assert problem is None  # small: within size and key bounds


@given(st.dictionaries(st.text(_TEXT, max_size=3), _JSON, max_size=4), st.booleans())
@settings(max_examples=100, deadline=None)
def test_a_nul_anywhere_in_metadata_is_refused(metadata: dict[str, Any], in_key: bool) -> None:
    from telemetra.store.catalog import metadata_problem

    poisoned = {"a\x00": 1} if in_key else {"a": ["x", {"b": "c\x00d"}]}
    problem = metadata_problem({**metadata, "z": poisoned})
    assert problem is not None and "NUL" in problem
