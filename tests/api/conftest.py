"""API fixtures (helpers in ``api_fixtures``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from api_fixtures import World, make_world


@pytest.fixture
async def world(engine: AsyncEngine, db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    """Two tenants, three logged-in users each, the app running in-process."""
    async for made in make_world(engine, db_url, tmp_path / "data"):
        yield made
