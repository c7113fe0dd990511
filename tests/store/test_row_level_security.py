"""PostgreSQL Row-Level Security: a query that forgot its tenant filter still sees one tenant.

Superusers bypass RLS whatever the table says, so this connects as an ordinary application
role, as production should (so do the API tests on PostgreSQL: see conftest's ``world``).
"""

from __future__ import annotations

import uuid

from sqlalchemy import select, text

from telemetra.store.catalog import create_device, create_tenant
from telemetra.store.database import open_database
from telemetra.store.schema import devices, tenants
from telemetra.store.tenancy import TENANT_SCOPE, scope_to

from conftest import app_role_url


async def test_forgotten_tenant_filter_returns_nothing_of_another_tenant(pg_url: str) -> None:
    engine = await open_database(await app_role_url(pg_url), migrate_schema=False)
    tag = uuid.uuid4().hex[:8]
    mine, theirs = f"rls-a-dev-{tag}", f"rls-b-dev-{tag}"
    try:
        async with engine.begin() as conn:  # unscoped, like the CLI
            a = await create_tenant(conn, f"rls-a-{tag}")
            b = await create_tenant(conn, f"rls-b-{tag}")
            await create_device(conn, a, mine)
            await create_device(conn, b, theirs)

        async def visible() -> tuple[set[str], set[str]]:
            async with engine.connect() as conn:  # no tenant filter in these queries
                uids = set((await conn.execute(select(devices.c.uid))).scalars())
                names = set((await conn.execute(select(tenants.c.name))).scalars())
            return {u for u in uids if tag in u}, {n for n in names if tag in n}

        token = TENANT_SCOPE.set("")
        try:
            scope_to(a)
            assert await visible() == ({mine}, {f"rls-a-{tag}"})
            refused = False
            try:
                async with engine.begin() as conn:
                    await create_device(conn, b, f"rls-sneak-{tag}")
            except Exception:
                refused = True
            assert refused, "writing into another tenant must be refused"
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
        finally:
            TENANT_SCOPE.reset(token)
        assert (await visible())[0] == {mine, theirs}  # unscoped: ingest and the CLI
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
