"""PostgreSQL Row-Level Security: a query that forgot its tenant filter still sees one tenant.

Superusers bypass RLS whatever the table says, so this connects as an ordinary application
role, as production should (so do the API tests on PostgreSQL: see conftest's ``world``).
RLS fails closed: a session that names no tenant sees nothing (migration 0008).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError

from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.database import open_database
from telemetra.store.schema import devices, tenants
from telemetra.store.tenancy import (
    ALL_TENANTS,
    NO_TENANT,
    TENANT_SCOPE,
    platform_wide,
    scope_to,
)

from conftest import app_role_url


async def test_forgotten_tenant_filter_returns_nothing_of_another_tenant(pg_url: str) -> None:
    # As serve opens it: fail closed until the work says whose it is.
    engine = await open_database(await app_role_url(pg_url), migrate_schema=False)
    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"rls-a-dev-{tag}", f"rls-b-dev-{tag}"
    try:
        with platform_wide():  # like the CLI
            async with engine.begin() as conn:
                a = await create_tenant(conn, f"rls-a-{tag}")
                b = await create_tenant(conn, f"rls-b-{tag}")
                await create_device(conn, a, mine)
                await create_device(conn, b, theirs)

        async def visible() -> tuple[set[str], set[str]]:
            async with engine.connect() as conn:  # no tenant filter in these queries
                uids = set((await conn.execute(select(devices.c.uid))).scalars())
                names = set((await conn.execute(select(tenants.c.name))).scalars())
            return {u for u in uids if tag in u}, {n for n in names if tag in n}

        token = TENANT_SCOPE.set(None)
        try:
            scope_to(a)
            assert await visible() == ({mine}, {f"rls-a-{tag}"})
            with pytest.raises(DBAPIError, match="row-level security"):
                async with engine.begin() as conn:
                    await create_device(conn, b, f"rls-sneak-{tag}")
            scope_to(None)  # platform admin
            assert await visible() == ({mine, theirs}, {f"rls-a-{tag}", f"rls-b-{tag}"})
            async with engine.connect() as conn:  # conditions too (the cast of '*' once failed)
                found = await conn.scalar(
                    select(devices.c.tenant_id).where(devices.c.uid == theirs)
                )
                assert found == b
                named = await conn.scalar(
                    select(tenants.c.id).where(tenants.c.name == f"rls-a-{tag}")
                )
                assert named == a
            TENANT_SCOPE.set(NO_TENANT)  # said explicitly: nothing either
            assert await visible() == (set(), set())
        finally:
            TENANT_SCOPE.reset(token)
        # Unscoped on serve's engine, on a connection that was scoped before: nothing.
        assert await visible() == (set(), set())
        with platform_wide():
            assert (await visible())[0] == {mine, theirs}
        async with engine.connect() as conn:
            forced = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_class "
                    "WHERE relrowsecurity AND relforcerowsecurity AND relname = 'readings'"
                )
            )
        assert forced == 1
    finally:
        await engine.dispose()


async def test_a_session_that_names_no_tenant_sees_nothing_and_writes_nothing(
    pg_url: str,
) -> None:
    """Fail closed: the ordinary role without telemetra.tenant_id (unset or empty) sees no
    tenant's rows and may not insert any; only an explicit '*' sees every tenant."""
    import asyncpg

    tag = uuid.uuid4().hex[:8]
    platform = await open_database(pg_url, migrate_schema=False, tenant_scope=ALL_TENANTS)
    try:
        async with platform.begin() as conn:
            tenant = await create_tenant(conn, f"closed-{tag}")
            await create_device(conn, tenant, f"closed-dev-{tag}")
    finally:
        await platform.dispose()
    url = (await app_role_url(pg_url)).replace("postgresql+asyncpg://", "postgresql://")
    count = f"SELECT count(*) FROM devices WHERE uid = 'closed-dev-{tag}'"
    insert = (
        "INSERT INTO devices (tenant_id, uid, status, token_hash, created_at, metadata) "
        f"VALUES ({tenant}, 'closed-sneak-{tag}', 'active', 'x', 0, '{{}}')"
    )
    for settings in ({}, {"telemetra.tenant_id": ""}):
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            for table in ("tenants", "devices", "users", "readings", "latest", "dead_letters"):
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await conn.execute(insert)
        finally:
            await conn.close()
    conn = await asyncpg.connect(url, server_settings={"telemetra.tenant_id": "*"})
    try:
        assert await conn.fetchval(count) == 1
    finally:
        await conn.close()
    conn = await asyncpg.connect(url, server_settings={"telemetra.tenant_id": str(tenant)})
    try:
        assert await conn.fetchval(count) == 1
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 1
    finally:
        await conn.close()


async def test_platform_wide_processes_see_every_tenant_without_a_round_trip(
    pg_url: str,
) -> None:
    """Ingest workers and the CLI open their engine with ALL_TENANTS: a startup parameter."""
    engine = await open_database(
        await app_role_url(pg_url), migrate_schema=False, tenant_scope=ALL_TENANTS
    )
    statements: list[str] = []
    event.listen(
        engine.sync_engine, "before_cursor_execute",
        lambda _c, _cur, statement, *_: statements.append(statement),
    )  # fmt: skip
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT current_setting('telemetra.tenant_id')")) == "*"
            assert await conn.scalar(select(func.count()).select_from(tenants)) >= 1
        assert not [s for s in statements if "set_config" in s]
    finally:
        await engine.dispose()


async def test_a_reference_cannot_pair_one_tenant_with_another_tenants_device(
    pg_url: str,
) -> None:
    """RLS trusts tenant_id: a latest or quality row must name its device's own tenant."""
    from sqlalchemy.exc import IntegrityError

    from telemetra.store.schema import device_quality, latest

    engine = await open_database(pg_url, migrate_schema=False)
    tag = uuid.uuid4().hex[:8]
    try:
        async with engine.begin() as conn:
            a = await create_tenant(conn, f"ref-a-{tag}")
            b = await create_tenant(conn, f"ref-b-{tag}")
            await create_device(conn, b, f"ref-b-dev-{tag}")
            theirs = await conn.scalar(select(devices.c.id).where(devices.c.tenant_id == b))
        rows = {
            latest: {"metric_id": 1, "ts": 0, "value": 1.0, "received_at": 0, "flags": 0},
            device_quality: {"counter": "accepted", "count": 1},
        }
        for table, values in rows.items():
            for tenant, allowed in ((b, True), (a, False)):
                try:
                    async with engine.begin() as conn:
                        await conn.execute(
                            table.insert().values(tenant_id=tenant, device_id=theirs, **values)
                        )
                        await conn.rollback()
                    stored = True
                except IntegrityError:
                    stored = False
                assert stored is allowed, (table.name, tenant)
    finally:
        await engine.dispose()


async def test_serve_warns_once_when_its_role_bypasses_rls(
    pg_url: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telemetra.api.app import create_app
    from telemetra.config import Settings
    from telemetra.store import database

    from api_fixtures import SECRET

    class Recorder:  # not structlog's capture_logs: a logger cached by an earlier test escapes it
        def __init__(self) -> None:
            self.events: list[dict[str, Any]] = []

        def warning(self, event: str, **kw: Any) -> None:
            self.events.append({"event": event, "log_level": "warning", **kw})

    for url, warned in ((pg_url, True), (await app_role_url(pg_url), False)):
        app = create_app(Settings(database_url=url, secret_key=SECRET, data_dir=tmp_path))
        recorder = Recorder()
        monkeypatch.setattr(database, "log", recorder)
        async with app.router.lifespan_context(app):
            pass
        logs = recorder.events
        warnings = [e for e in logs if e["log_level"] == "warning" and "Row-Level" in e["event"]]
        if warned:
            assert len(warnings) == 1, logs
            assert warnings[0]["role"] == "postgres"
            assert '"postgres"' in warnings[0]["event"]
            assert "telemetra migrate --app-role" in warnings[0]["event"]
        else:
            assert warnings == [], logs


ALERT_TABLES = ("alert_rules", "alerts", "alert_series_state", "notification_outbox")


async def test_alert_tables_are_isolated_by_tenant_and_fail_closed(pg_url: str) -> None:
    """Rules, alerts, engine state and the outbox: forced RLS; a tenant's session sees only its
    own rows and cannot write another's; a session that names no tenant sees none."""
    import asyncpg

    from telemetra.alerts import store

    tag = uuid.uuid4().hex[:8]
    platform = await open_database(pg_url, migrate_schema=False, tenant_scope=ALL_TENANTS)
    rule = {"name": f"rls-{tag}", "kind": "no_data", "condition": {"for": "5m"},
            "channels": [{"kind": "mqtt", "topic": "alerts"}]}  # fmt: skip
    try:
        async with platform.begin() as conn:
            tenant_ids = [await create_tenant(conn, f"rls-al-{x}-{tag}") for x in "ab"]
            for tenant in tenant_ids:
                made = await store.create_rule(conn, tenant, rule)
                await store.open_alert(conn, made, "d1", None, value=None, message="silent",
                                       started_at=0)  # fmt: skip
                await store.save_series_state(conn, [(tenant, (made.id, "d1", None), {"x": 1})])
        async with platform.connect() as conn:
            forced = await conn.scalar(
                text(
                    "SELECT count(*) FROM pg_class WHERE relrowsecurity AND relforcerowsecurity "
                    f"AND relname IN {ALERT_TABLES}"
                )
            )
        assert forced == len(ALERT_TABLES)
    finally:
        await platform.dispose()
    a, b = tenant_ids
    url = (await app_role_url(pg_url)).replace("postgresql+asyncpg://", "postgresql://")
    for settings, expected in (({}, set()), ({"telemetra.tenant_id": ""}, set()),
                               ({"telemetra.tenant_id": str(a)}, {a}),
                               ({"telemetra.tenant_id": "*"}, {a, b})):  # fmt: skip
        conn = await asyncpg.connect(url, server_settings=settings)
        try:
            for table in ALERT_TABLES:
                seen = {
                    r[0] for r in await conn.fetch(f"SELECT DISTINCT tenant_id FROM {table}")
                } & {a, b}
                assert seen == expected, (table, settings)
            if settings.get("telemetra.tenant_id") != "*":
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level"):
                    await conn.execute(
                        "INSERT INTO alert_rules (tenant_id, name, kind, severity, enabled, "
                        f"definition, created_at, updated_at) VALUES ({b}, 'sneak-{tag}', "
                        "'no_data', 'info', true, '{}', 0, 0)"
                    )
        finally:
            await conn.close()
