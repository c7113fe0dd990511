"""Migrations match the schema on both databases; a default tenant exists; migrate is idempotent."""

from __future__ import annotations

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
