"""Migrations match the schema on both databases; a default tenant exists; migrate is idempotent."""

from __future__ import annotations

import uuid
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from telemetra.store.database import migrate
from telemetra.store.schema import DEFAULT_TENANT, metadata, tenants


async def test_migrated_database_matches_schema(engine: AsyncEngine) -> None:
    await migrate(engine)  # a second run changes nothing

    def diff(connection: Any) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(connection), metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        names = (await conn.execute(select(tenants.c.name))).scalars().all()
    assert DEFAULT_TENANT in names


async def test_migration_0008_makes_row_level_security_fail_closed() -> None:
    """Up to 0007 an ordinary role's session that named no tenant saw every tenant's rows;
    from 0008 it sees none, and '*' still sees all."""
    import asyncpg

    from telemetra.store.database import create_engine

    from conftest import PG_SERVER, _admin, app_role_url, missing

    name = f"telemetra_0008_{uuid.uuid4().hex[:8]}"
    try:
        await _admin(f'CREATE DATABASE "{name}"')
    except OSError:
        missing("PostgreSQL")
    url = f"{PG_SERVER}/{name}"
    engine = create_engine(url)
    try:

        async def unscoped_count() -> int:
            conn = await asyncpg.connect(await app_role_url(url))  # no telemetra.tenant_id
            try:
                return int(await conn.fetchval("SELECT count(*) FROM tenants"))
            finally:
                await conn.close()

        await migrate(engine, "0007")
        assert await unscoped_count() == 1  # the default tenant: fail open
        await migrate(engine)
        assert await unscoped_count() == 0  # fail closed
        conn = await asyncpg.connect(
            await app_role_url(url), server_settings={"telemetra.tenant_id": "*"}
        )
        try:
            assert await conn.fetchval("SELECT count(*) FROM tenants") == 1
        finally:
            await conn.close()
    finally:
        await engine.dispose()
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
