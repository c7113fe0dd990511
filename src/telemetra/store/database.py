"""Opening the database: one async engine, SQLite tuned for a single writer, migrations applied."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from telemetra.config import async_url
from telemetra.store.tenancy import ALL_TENANTS, NO_TENANT, scope_hook

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


def create_engine(url: str, *, tenant_scope: str = NO_TENANT) -> AsyncEngine:
    """An async engine for ``url`` (plain ``postgresql://`` and ``sqlite:///`` accepted).

    ``tenant_scope`` is what work that names no tenant sees under PostgreSQL Row-Level
    Security: nothing (``NO_TENANT``, ``serve``) or every tenant (``ALL_TENANTS``: ingest
    workers, the CLI, migrations). See ``store.tenancy``.
    """
    url = async_url(url)
    if url.startswith("sqlite+aiosqlite:///"):
        path = url.removeprefix("sqlite+aiosqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, connect_args={"timeout": 5})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # The scope as a startup parameter: no round trip for connections that keep it.
    settings = {"telemetra.tenant_id": tenant_scope} if tenant_scope else {}
    engine = create_async_engine(
        url, pool_size=5, max_overflow=5, pool_pre_ping=True,
        connect_args={"server_settings": settings},
    )  # fmt: skip
    event.listen(engine.sync_engine, "checkout", scope_hook(tenant_scope))
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
        if connection.dialect.name == "postgresql":
            _scope_migrations(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.begin() as conn:
        await conn.run_sync(upgrade)


FAIL_CLOSED_REVISION = "0008"  # from here on only '*' sees every tenant


def _scope_migrations(connection: Any) -> None:
    """Let migrations see every tenant's rows (a table owner is subject to forced RLS too).

    Up to revision 0007 the policies read an empty setting as every tenant (and '*' broke
    their casts before 0006); from 0008 on only '*' does, and 0008 switches to it for the
    migrations after it. Local to the migration transaction.
    """
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    at_least = current is not None and current >= FAIL_CLOSED_REVISION
    scope = ALL_TENANTS if at_least else NO_TENANT
    connection.execute(
        text("SELECT set_config('telemetra.tenant_id', :scope, true)"), {"scope": scope}
    )


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


async def open_database(
    url: str, *, migrate_schema: bool | None = None, tenant_scope: str = NO_TENANT
) -> AsyncEngine:
    """Create the engine with the schema up to date.

    The embedded SQLite default migrates itself; a server database (several processes may
    start at once) is only checked, and ``telemetra migrate`` applies its migrations.
    ``tenant_scope``: see ``create_engine``.
    """
    engine = create_engine(url, tenant_scope=tenant_scope)
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


async def wait_for_database(
    url: str, stop: asyncio.Event, *, tenant_scope: str = NO_TENANT
) -> AsyncEngine | None:
    """``open_database``, retried with backoff while the server is unreachable.

    Returns None when ``stop`` is set first. Errors that waiting cannot fix (a schema that
    needs ``telemetra migrate``, a bad URL) are raised at once.
    """
    delay = 1.0
    while not stop.is_set():
        try:
            return await open_database(url, tenant_scope=tenant_scope)
        except Exception as error:
            if not database_unavailable(error):
                raise
            log.warning(
                "database unavailable; waiting",
                database=shown_url(url), retry_in_s=delay, error=str(error)[:200],
            )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return None


def shown_url(url: str) -> str:
    """``url`` as users write it, without its password (for messages)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(async_url(url))
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite:///{parsed.database or ''}"
    user = f"{parsed.username}@" if parsed.username else ""
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.get_backend_name()}://{user}{parsed.host or ''}{port}/{parsed.database or ''}"


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a server error, through SQLAlchemy's and the driver's wrappers."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return None
        code = getattr(seen, "sqlstate", None) or getattr(seen, "pgcode", None)
        if isinstance(code, str):
            return code
        seen = getattr(seen, "orig", None) or seen.__cause__
    return None


def connection_problem(error: BaseException, url: str) -> str | None:
    """One line saying why the database at ``url`` cannot be used and what to do, or None when
    ``error`` is not about reaching, logging in to or finding the database."""
    from sqlalchemy.engine import make_url

    parsed = make_url(async_url(url))
    shown = shown_url(url)
    if parsed.get_backend_name() == "sqlite":
        if "unable to open database file" in str(error):
            return f"cannot open the SQLite database {shown}: check that its folder is writable"
        return None
    host = parsed.host or "localhost"
    port = f" -p {parsed.port}" if parsed.port and parsed.port != 5432 else ""
    user, name = parsed.username or "postgres", parsed.database or ""
    server = f"PostgreSQL at {host}:{parsed.port or 5432}"
    state = _sqlstate(error)
    if state == "3D000":  # invalid_catalog_name
        return (
            f'database "{name}" does not exist ({shown}); create it with '
            f"`createdb -h {host}{port} -U {user} {name}` (as a role allowed to create "
            "databases), then run `telemetra migrate`"
        )
    if state == "28P01":  # invalid_password
        return (
            f'{server} refused the password of role "{user}" ({shown}); '
            "check the password in TELEMETRA_DATABASE_URL"
        )
    if state == "28000":  # invalid_authorization_specification: no such role, pg_hba refusal
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        return (
            f'{server} refused role "{user}" ({shown}): {reason}; create the role '
            f"(`createuser -h {host}{port} -U postgres --pwprompt {user}`) or fix "
            "TELEMETRA_DATABASE_URL"
        )
    if isinstance(error, OSError | TimeoutError) and state is None:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return (
            f"cannot reach {server} ({shown}): {reason}; is the server running and "
            "TELEMETRA_DATABASE_URL right?"
        )
    return None


async def rls_bypass_role(engine: AsyncEngine) -> str | None:
    """The name of the role ``engine`` logs in as when it bypasses Row-Level Security
    (superuser or BYPASSRLS); None when RLS applies to it (or on SQLite)."""
    if is_sqlite(engine):
        return None
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT rolname, rolsuper, rolbypassrls FROM pg_roles "
                    "WHERE rolname = current_user"
                )
            )
        ).one()
    return str(row.rolname) if row.rolsuper or row.rolbypassrls else None


async def warn_if_rls_bypassed(engine: AsyncEngine, process: str) -> None:
    """Log one warning when ``process`` would run unprotected by Row-Level Security."""
    role = await rls_bypass_role(engine)
    if role is not None:
        log.warning(
            f'{process} connects to PostgreSQL as "{role}", a role that bypasses Row-Level '
            "Security (superuser or BYPASSRLS): tenant isolation rests on the application "
            "alone. Connect as an ordinary role: `telemetra migrate --app-role telemetra_app` "
            "(as the owner) creates one with the grants it needs",
            role=role,
        )


_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


async def grant_app_role(conn: AsyncConnection, role: str, password: str | None = None) -> bool:
    """Create (if missing) the ordinary role ``serve`` and ingest connect as — ``LOGIN
    NOSUPERUSER NOBYPASSRLS``, so Row-Level Security applies — and grant it what they need:
    reading and writing the tables, using the sequences (the schema version: read only).

    Run as the owner of the tables, after migrating. Default privileges cover tables that
    later migrations (run by the same owner) create. True when the role was created.
    Raises ValueError for an unusable name or a role that bypasses RLS.
    """
    if not _ROLE_NAME.fullmatch(role):
        raise ValueError(
            f"role name {role!r}: use lower-case letters, digits and _ (at most 63 characters)"
        )
    found = (
        await conn.execute(
            text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = :r"), {"r": role}
        )
    ).one_or_none()
    if found is not None and (found.rolsuper or found.rolbypassrls):
        raise ValueError(
            f'role "{role}" bypasses Row-Level Security (superuser or BYPASSRLS); choose an '
            f"ordinary role, or run `ALTER ROLE {role} NOSUPERUSER NOBYPASSRLS` first"
        )
    # Utility statements take no bind parameters: a literal with quotes doubled
    # (standard_conforming_strings is on by default since PostgreSQL 9.1).
    secret = "" if password is None else " PASSWORD '" + password.replace("'", "''") + "'"
    created = found is None
    if created:
        # Concurrent creators (tests, two installers): the loser finds it made.
        await conn.execute(
            text(
                f"DO $$ BEGIN CREATE ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS{secret}; "
                "EXCEPTION WHEN duplicate_object THEN NULL; END $$"
            )
        )
    elif secret:
        await conn.execute(text(f"ALTER ROLE {role}{secret}"))
    owner = (await conn.execute(text("SELECT current_user"))).scalar_one()
    for sql in (
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        f"REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {role}",
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA public '
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {role}",
        f'ALTER DEFAULT PRIVILEGES FOR ROLE "{owner}" IN SCHEMA public '
        f"GRANT USAGE ON SEQUENCES TO {role}",
    ):
        await conn.execute(text(sql))
    return created
