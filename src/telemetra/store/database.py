"""Opening the database: one async engine, SQLite tuned for a single writer, migrations applied."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from telemetra.config import async_url
from telemetra.store.tenancy import apply_scope

log = structlog.get_logger("telemetra.database")


def database_unavailable(error: BaseException) -> bool:
    """True for errors that mean "try again later", not "this data is bad"."""
    if isinstance(error, sa_exc.DBAPIError):
        return error.connection_invalidated or isinstance(
            error, sa_exc.OperationalError | sa_exc.InterfaceError
        )
    return isinstance(error, OSError | TimeoutError | ConnectionError)


def is_sqlite(engine: AsyncEngine | AsyncConnection) -> bool:
    """True when the engine talks to SQLite (the embedded default)."""
    return engine.dialect.name == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url`` (plain ``postgresql://`` and ``sqlite:///`` accepted)."""
    url = async_url(url)
    if url.startswith("sqlite+aiosqlite:///"):
        path = url.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 5})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)
    event.listen(engine.sync_engine, "checkout", apply_scope)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers never block the writer; NORMAL sync is durable at each checkpoint and
    # crash-safe in WAL mode.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (idempotent)."""
    from alembic import command

    config = _alembic_config()

    def upgrade(connection: Any) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


class SchemaOutOfDate(LookupError):
    """The database is not at the schema this version of Telemetra needs."""


def _alembic_config() -> Any:
    from alembic.config import Config

    here = Path(__file__).parent
    config = Config(str(here / "alembic.ini"))
    config.set_main_option("script_location", str(here / "migrations"))
    return config


async def check_schema(engine: AsyncEngine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    async with engine.connect() as conn:
        current = await conn.run_sync(
            lambda c: MigrationContext.configure(c).get_current_revision()
        )
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at {current or 'nothing'}, this Telemetra needs {head}: "
            "run `telemetra migrate`"
        )


async def open_database(url: str, *, migrate_schema: bool | None = None) -> AsyncEngine:
    """Create the engine with the schema up to date.

    The embedded SQLite default migrates itself; a server database (several processes may
    start at once) is only checked, and ``telemetra migrate`` applies its migrations.
    """
    engine = create_engine(url)
    if migrate_schema is None:
        migrate_schema = is_sqlite(engine)
    try:
        if migrate_schema:
            await migrate(engine)
        else:
            await check_schema(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine


async def wait_for_database(url: str, stop: asyncio.Event) -> AsyncEngine | None:
    """``open_database``, retried with backoff while the server is unreachable.

    Returns None when ``stop`` is set first. Errors that waiting cannot fix (a schema that
    needs ``telemetra migrate``, a bad URL) are raised at once.
    """
    delay = 1.0
    while not stop.is_set():
        try:
            return await open_database(url)
        except Exception as error:
            if not database_unavailable(error):
                raise
            log.warning("database unavailable; waiting", retry_in_s=delay, error=str(error)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return None
