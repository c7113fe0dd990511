"""The HTTP API in-process (httpx + ASGI) on SQLite and PostgreSQL: auth, roles, tenants,
devices, HTTP ingest, one error shape."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.api.app import create_app
from telemetra.config import Settings

from api_fixtures import SECRET, World, assert_error


async def test_health_ready_and_login(world: World) -> None:
    c = world.client
    assert (await c.get("/health")).json() == {"status": "ok"}
    ready = await c.get("/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    me = await c.get("/api/v1/auth/me", headers=world.auth("a-operator"))
    assert me.json()["role"] == "operator"
    wrong = await c.post("/api/v1/auth/token", data={"username": "nobody", "password": "x"})
    assert_error(wrong, 401, "unauthorized")
    assert_error(await c.get("/api/v1/auth/me"), 401, "unauthorized")
    assert_error(await c.get("/api/v1/nothing-here"), 404, "not_found")


async def test_forged_tokens_are_refused(world: World) -> None:
    good = jwt.decode(world.tokens["a-owner"], SECRET, algorithms=["HS256"], issuer="telemetra")
    forged = {
        "alg none": jwt.encode({**good, "role": "admin"}, key=None, algorithm="none"),
        "wrong key": jwt.encode({**good, "role": "admin"}, "x" * 48, algorithm="HS256"),
        "expired": jwt.encode({**good, "exp": int(time.time()) - 10}, SECRET, algorithm="HS256"),
        "no issuer": jwt.encode(
            {k: v for k, v in good.items() if k != "iss"}, SECRET, algorithm="HS256"
        ),
        "tampered": world.tokens["a-owner"][:-4] + "AAAA",
    }
    for name, token in forged.items():
        reply = await world.client.get(
            "/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}
        )
        assert reply.status_code == 401, name


async def test_devices_roles_tenants_and_mass_assignment(world: World) -> None:
    c = world.client
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    assert_error(
        await c.post("/api/v1/devices", json={"uid": uid}, headers=world.auth("a-viewer")),
        403,
        "forbidden",
    )
    made = await c.post(
        "/api/v1/devices",
        json={"uid": uid, "type": "climate", "metadata": {"firmware": "1.0"}},
        headers=world.auth("a-operator"),
    )
    assert made.status_code == 201 and len(made.json()["token"]) >= 43
    again = await c.post("/api/v1/devices", json={"uid": uid}, headers=world.auth("a-operator"))
    assert_error(again, 409, "conflict")
    # Device ids are one namespace (MQTT usernames): another tenant gets the same answer, which
    # says the id is taken and nothing about whose it is.
    theirs = await c.post("/api/v1/devices", json={"uid": uid}, headers=world.auth("b-operator"))
    assert theirs.json() == again.json()
    assert "unique across the installation" in theirs.json()["error"]["message"]
    assert_error(
        await c.post("/api/v1/devices", json={"uid": "a/b"}, headers=world.auth("a-operator")),
        422,
        "invalid_request",
    )
    sneaky = await c.patch(
        f"/api/v1/devices/{uid}", json={"tenant_id": 1}, headers=world.auth("a-operator")
    )
    assert_error(sneaky, 422, "invalid_request")
    edited = await c.patch(
        f"/api/v1/devices/{uid}",
        json={"name": "Greenhouse", "timezone": "Europe/Berlin"},
        headers=world.auth("a-operator"),
    )
    assert edited.json()["name"] == "Greenhouse"
    listed = await c.get("/api/v1/devices?q=greenhouse", headers=world.auth("a-viewer"))
    assert [d["uid"] for d in listed.json()["items"]] == [uid]
    assert "token" not in listed.json()["items"][0]

    # Another tenant sees nothing and can change nothing: 404 exactly like a missing device.
    for who in ("b-owner", "b-operator", "b-viewer"):
        h = world.auth(who)
        assert_error(await c.get(f"/api/v1/devices/{uid}", headers=h), 404, "not_found")
        assert (await c.get("/api/v1/devices", headers=h)).json()["items"] == []
        for method, path in (("PATCH", ""), ("DELETE", ""), ("POST", "/token")):
            reply = await c.request(
                method,
                f"/api/v1/devices/{uid}{path}",
                headers=h,
                json={} if method == "PATCH" else None,
            )
            assert reply.status_code in (403, 404), (who, method)
    missing = await c.get("/api/v1/devices/no-such-device", headers=world.auth("b-owner"))
    assert missing.json()["error"]["message"].startswith("no device")

    rotated = await c.post(f"/api/v1/devices/{uid}/token", headers=world.auth("a-operator"))
    old, new = made.json()["token"], rotated.json()["token"]
    assert_error(
        await c.post("/api/v1/ingest", json={"t": 1}, headers={"X-API-Key": old}),
        401,
        "unauthorized",
    )
    ok = await c.post("/api/v1/ingest", json={"t": 1}, headers={"X-API-Key": new})
    assert ok.json()["accepted"] == 1
    assert (
        await c.delete(f"/api/v1/devices/{uid}", headers=world.auth("a-operator"))
    ).status_code == 204
    assert_error(
        await c.get(f"/api/v1/devices/{uid}", headers=world.auth("a-owner")), 404, "not_found"
    )


async def test_http_ingest_reports_each_rejection(world: World) -> None:
    c = world.client
    uid = f"dev-{uuid.uuid4().hex[:8]}"
    made = await c.post("/api/v1/devices", json={"uid": uid}, headers=world.auth("a-owner"))
    token = made.json()["token"]
    now_ms = int(time.time() * 1000) - 1000
    reply = await c.post(
        "/api/v1/ingest",
        json=[{"ts": now_ms, "temperature": 21.5}, {"ts": now_ms + 1, "temperature": 6000}],
        headers={"Authorization": f"Bearer {token}"},
    )
    body = reply.json()
    assert body["accepted"] == 1
    assert body["rejected"][0]["index"] == 1 and body["rejected"][0]["reason"] == "out_of_range"

    again = await c.post(f"/api/v1/{token}/telemetry", json={"ts": now_ms, "temperature": 21.5})
    assert again.json() == {"accepted": 1, "rejected": [], "event_ids": []}  # a redelivery

    batch = await c.post(
        "/api/v1/ingest/batch",
        json=[{"ts": now_ms + 5, "h": 40}, {"event_id": "x", "ts": "yesterday", "h": 1}],
        headers={"X-API-Key": token},
    )
    results = batch.json()["results"]
    assert results[0]["accepted"] == 1 and results[1]["rejected"][0]["reason"] == "bad_timestamp"
    too_big = await c.post(
        "/api/v1/ingest", content=b"[" + b"1," * 4000 + b"1]", headers={"X-API-Key": token}
    )
    assert_error(too_big, 413, "payload_too_large")
    assert_error(
        await c.post("/api/v1/ingest", json={"t": 1}, headers={"X-API-Key": "nope"}),
        401,
        "unauthorized",
    )


def test_serve_refuses_a_weak_secret() -> None:
    with pytest.raises(ValueError, match=r"secrets\.token_urlsafe"):
        create_app(Settings(secret_key="short"))
    create_app(Settings(demo=True))  # the demo may run without one


async def test_prometheus_metrics(world: World) -> None:
    c = world.client
    made = await c.post("/api/v1/devices", json={"uid": "m-1"}, headers=world.auth("a-owner"))
    token = made.json()["token"]
    await c.post("/api/v1/ingest", json={"temperature": 6000, "h": 1}, headers={"X-API-Key": token})
    text = (await c.get("/metrics")).text
    assert 'telemetra_ingest_rejections_total{reason="out_of_range"}' in text
    assert 'telemetra_ingest_messages_total{source="http"}' in text
    assert "telemetra_ingest_batch_commit_seconds_bucket" in text
    assert 'route="/api/v1/devices"' in text and 'route="/api/v1/ingest"' in text


async def test_device_certificates(world: World) -> None:
    from cryptography import x509

    c = world.client
    await c.post("/api/v1/devices", json={"uid": "cert-1"}, headers=world.auth("a-operator"))
    reply = await c.post("/api/v1/devices/cert-1/certificate", headers=world.auth("a-operator"))
    body = reply.json()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "cert-1"
    assert "PRIVATE KEY" in body["private_key"] and "CERTIFICATE" in body["ca_certificate"]
    bundle = await c.post(
        "/api/v1/devices/cert-1/certificate?format=zip", headers=world.auth("a-owner")
    )
    assert bundle.headers["content-type"] == "application/zip" and bundle.content[:2] == b"PK"
    assert_error(
        await c.post("/api/v1/devices/cert-1/certificate", headers=world.auth("a-viewer")),
        403,
        "forbidden",
    )
    assert_error(
        await c.post("/api/v1/devices/cert-1/certificate", headers=world.auth("b-owner")),
        404,
        "not_found",
    )


async def test_ready_names_an_unreachable_broker(engine: AsyncEngine, db_url: str) -> None:
    from conftest import free_port

    app = create_app(
        Settings(
            database_url=db_url, secret_key=SECRET, mqtt_url=f"mqtt://127.0.0.1:{free_port()}"
        ),
        engine,
    )
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        reply = await c.get("/ready")
    assert reply.status_code == 503
    assert reply.json()["checks"]["broker"].startswith("unreachable at 127.0.0.1:")
    assert reply.json()["checks"]["database"] == "ok"


async def test_an_unexpected_error_is_a_500_in_the_one_shape(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr("telemetra.store.catalog.find_devices", broken)
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=world.app, raise_app_exceptions=False),
        base_url="http://test",
    )
    async with client:
        reply = await client.get("/api/v1/devices", headers=world.auth("a-viewer"))
    assert_error(reply, 500, "internal_error")
    assert "a bug" not in reply.text  # details stay in the log


# --- hardening: what hostile testing found -----------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    """A metadata object ``depth`` levels deep (itself being level 1)."""
    node: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        node = {"n": node}
    return node


async def test_device_metadata_is_bounded_and_a_stored_monster_breaks_no_read(
    world: World, engine: AsyncEngine
) -> None:
    c, h = world.client, world.auth("a-operator")
    uid = f"meta-{uuid.uuid4().hex[:8]}"
    for metadata, problem in (
        (_nested(300), "nested deeper than 8 levels"),
        (_nested(9), "nested deeper than 8 levels"),
        ({f"k{i}": i for i in range(257)}, "more than 256 keys"),
        ({"k" * 129: 1}, "at most 128 characters"),
    ):
        reply = await c.post("/api/v1/devices", json={"uid": uid, "metadata": metadata}, headers=h)
        assert_error(reply, 422, "invalid_request")
        assert problem in reply.text, reply.text
        assert_error(await c.get(f"/api/v1/devices/{uid}", headers=h), 404, "not_found")
    made = await c.post("/api/v1/devices", json={"uid": uid, "metadata": _nested(8)}, headers=h)
    assert made.status_code == 201 and made.json()["metadata"] == _nested(8)
    patched = await c.patch(f"/api/v1/devices/{uid}", json={"metadata": _nested(300)}, headers=h)
    assert_error(patched, 422, "invalid_request")

    # Metadata stored before the bounds (or by hand) is shown as a note, never a 500.
    from telemetra.store.catalog import get_device, update_device
    from telemetra.store.tenancy import platform_wide

    with platform_wide():
        async with engine.begin() as conn:
            row = await get_device(conn, uid, None)
            await update_device(conn, row.id, {"metadata": _nested(300)})
    one = await c.get(f"/api/v1/devices/{uid}", headers=h)
    assert one.status_code == 200 and "_unreadable" in one.json()["metadata"], one.text
    listed = await c.get("/api/v1/devices", headers=h)
    assert listed.status_code == 200 and uid in [d["uid"] for d in listed.json()["items"]]
    fixed = await c.patch(f"/api/v1/devices/{uid}", json={"metadata": {"site": "n"}}, headers=h)
    assert fixed.json()["metadata"] == {"site": "n"}


def test_metadata_bounds_in_size() -> None:
    from telemetra.store.catalog import metadata_problem

    assert metadata_problem({"blob": "x" * 16_370}) is None
    assert "at most 16384" in str(metadata_problem({"blob": "x" * 17_000}))
    assert metadata_problem([1]) == "metadata must be a JSON object"


async def test_the_broker_s_own_logins_are_not_device_ids(world: World) -> None:
    for uid in ("telemetra-ingest", "chirpstack"):
        reply = await world.client.post(
            "/api/v1/devices", json={"uid": uid}, headers=world.auth("a-operator")
        )
        assert_error(reply, 422, "invalid_request")
        assert f"device id {uid!r} is reserved" in reply.json()["error"]["message"]


async def test_a_custom_ingest_username_is_reserved_too(
    engine: AsyncEngine, db_url: str, tmp_path: Path
) -> None:
    """broker-config --ingest-username my-ingest: the API (TELEMETRA_BROKER_DIR) refuses it."""
    from api_fixtures import make_world

    broker = tmp_path / "broker"
    broker.mkdir()
    (broker / "telemetra-broker.json").write_text('{"ingest_username": "my-ingest"}')
    (broker / "services.passwd").write_text("")
    worlds = make_world(engine, db_url, tmp_path / "data", broker_dir=broker)
    try:
        world = await anext(worlds)
        reply = await world.client.post(
            "/api/v1/devices", json={"uid": "my-ingest"}, headers=world.auth("a-operator")
        )
        assert_error(reply, 422, "invalid_request")
        assert "device id 'my-ingest' is reserved" in reply.text
    finally:
        await worlds.aclose()


def test_the_cli_refuses_the_broker_s_own_logins(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from telemetra.cli import app

    env = {"TELEMETRA_DATA_DIR": str(tmp_path / "data"), "TELEMETRA_DATABASE_URL": ""}
    result = CliRunner().invoke(app, ["device", "create", "chirpstack"], env=env)
    assert result.exit_code == 1
    assert "device id 'chirpstack' is reserved" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/devices", b'{"uid": "caf\xe9"}'),
        ("PATCH", "/api/v1/devices/x", b'{"name": "caf\xe9"}'),
        ("POST", "/api/v1/users", b'{"username": "\xff", "password": "long enough"}'),
        ("POST", "/api/v1/tenants", b'{"name": "\xff"}'),
        ("POST", "/api/v1/devices", b"[" * 4000),  # too deep for the JSON parser
    ],
)
async def test_an_unreadable_json_body_is_a_422(
    world: World, method: str, path: str, body: bytes
) -> None:
    reply = await world.client.request(
        method, path, content=body, headers={**world.auth("a-owner"),
                                             "Content-Type": "application/json"}
    )  # fmt: skip
    assert_error(reply, 422, "invalid_request")
    assert reply.json()["error"]["details"][0]["field"].startswith("body")


async def test_a_batch_that_is_not_a_json_array_is_a_422(world: World) -> None:
    made = await world.client.post(
        "/api/v1/devices", json={"uid": f"b-{uuid.uuid4().hex[:8]}"}, headers=world.auth("a-owner")
    )
    key = {"X-API-Key": made.json()["token"]}
    for body in (b"\xff\xfe", b"{not json", b'{"an": "object"}'):
        reply = await world.client.post("/api/v1/ingest/batch", content=body, headers=key)
        assert_error(reply, 422, "invalid_request")


async def _outage_requests(c: httpx.AsyncClient) -> list[httpx.Response]:
    from telemetra.api.auth import Caller, issue_token

    token = issue_token(SECRET, Caller(1, "maria", 1, "viewer"), 60, "a hash")
    return [
        await c.post("/api/v1/auth/token", data={"username": "maria", "password": "x" * 8}),
        await c.get("/api/v1/devices", headers={"Authorization": f"Bearer {token}"}),
        await c.post("/api/v1/ingest", json={"t": 1}, headers={"X-API-Key": "a device token"}),
    ]


def _assert_unavailable(replies: list[httpx.Response], err: str) -> None:
    for reply in replies:
        assert_error(reply, 503, "unavailable")
        assert reply.headers["Retry-After"] == "5"
        assert "database is unavailable" in reply.json()["error"]["message"]
    lines = [line for line in err.splitlines() if "database unavailable" in line]
    assert len(lines) == len(replies), err
    assert "Traceback" not in err


@pytest.mark.parametrize("outage", ["port closed", "connections cut, then back"])
async def test_a_database_that_goes_away_is_a_503_and_one_log_line(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], outage: str
) -> None:
    """asyncpg raises a refused or reset connection as a plain OSError: 503 with Retry-After
    and one log line per request, not a 500 with a traceback; back to 200 once it is back."""
    from urllib.parse import urlsplit

    from telemetra import logs
    from telemetra.store.database import open_database

    from api_fixtures import make_world
    from conftest import TcpProxy

    logs.configure("console")
    port = urlsplit(pg_url).port or 5432
    proxy = TcpProxy(port)
    url = pg_url.replace(f":{port}/", f":{proxy.port}/", 1)
    engine = await open_database(url, migrate_schema=False)
    worlds = make_world(engine, url, tmp_path)
    try:
        world = await anext(worlds)
        c, h = world.client, world.auth("a-viewer")
        assert (await c.get("/api/v1/devices", headers=h)).status_code == 200
        if outage == "port closed":
            proxy.close()  # nothing listens: ConnectionRefusedError
        else:
            proxy.take_down()  # open connections cut, new ones closed at once
        capsys.readouterr()
        _assert_unavailable(await _outage_requests(c), capsys.readouterr().err)
        if outage == "port closed":
            return
        proxy.bring_up()
        statuses = []
        for _ in range(5):  # a connection cut meanwhile may fail once more
            statuses.append((await c.get("/api/v1/devices", headers=h)).status_code)
            if statuses[-1] == 200:
                break
        assert statuses[-1] == 200 and set(statuses) <= {200, 503}, statuses
    finally:
        await worlds.aclose()
        await engine.dispose()
        proxy.close()
