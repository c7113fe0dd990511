"""The ``telemetra`` command line. Thin: parse arguments, call the capability, report."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from telemetra import __version__
from telemetra.config import Settings

app = typer.Typer(
    help="Telemetra: IoT telemetry — ingest, clean, store and query device time series.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True)
device_app = typer.Typer(help="Manage devices.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(device_app, name="device")
console = Console(stderr=True)
T = TypeVar("T")


def fail(message: str) -> typer.Exit:
    """Print a one-line reason and exit non-zero."""
    console.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


def settings() -> Settings:
    try:
        return Settings()
    except Exception as error:  # pydantic ValidationError: show which variable is wrong
        raise fail(f"invalid configuration: {error}") from None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn expected failures into one-line errors."""
    try:
        return asyncio.run(coro)
    except (ValueError, LookupError, OSError) as error:
        raise fail(str(error)) from None


async def _engine(config: Settings) -> Any:
    from telemetra.store.database import open_database

    return await open_database(config.sqlalchemy_url)


def version_callback(value: bool) -> None:
    if value:
        print(f"telemetra {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True)
    ] = False,
) -> None:
    """Telemetra: IoT telemetry — ingest, clean, store and query device time series."""
    config = settings()
    from telemetra.logs import configure

    configure(config.log_format, config.log_level)


@app.command()
def migrate(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Apply database migrations (TELEMETRA_DATABASE_URL)."""
    from telemetra.store.database import create_engine
    from telemetra.store.database import migrate as apply

    config = settings()

    async def go() -> None:
        engine = create_engine(config.sqlalchemy_url)
        try:
            await apply(engine, revision)
        finally:
            await engine.dispose()

    run(go())
    console.print(f"database at revision {revision}")


def install_stop(stop: asyncio.Event) -> None:
    """Ctrl-C / SIGTERM set ``stop`` so work in hand finishes before exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


@app.command()
def ingest() -> None:
    """Run the MQTT ingest worker (shared subscription: run several)."""
    from telemetra.ingest.mqtt import MqttIngest, parse_mqtt_url
    from telemetra.ingest.pipeline import Pipeline

    config = settings()
    parse_mqtt_url(config.mqtt_url)

    async def go() -> None:
        engine = await _engine(config)
        stop = asyncio.Event()
        install_stop(stop)
        try:
            await MqttIngest(config, Pipeline(engine, config, routes_of(config))).run(stop)
        finally:
            await engine.dispose()

    run(go())


def routes_of(config: Settings) -> Any:
    from telemetra.ingest.routes import DEFAULT_ROUTES, parse_routes

    return parse_routes(config.routes) if config.routes else DEFAULT_ROUTES


@tenant_app.command("create")
def tenant_create(
    name: str,
    timezone: Annotated[str | None, typer.Option(help="IANA zone for naive timestamps")] = None,
) -> None:
    """Create a tenant."""
    from telemetra.store.catalog import create_tenant

    config = settings()

    async def go() -> int:
        engine = await _engine(config)
        try:
            async with engine.begin() as conn:
                return await create_tenant(conn, name, timezone)
        finally:
            await engine.dispose()

    tenant_id = run(go())
    console.print(f"tenant {name!r} created (id {tenant_id})")


@device_app.command("create")
def device_create(
    uid: Annotated[str, typer.Argument(help="device id (MQTT topic level and username)")],
    tenant: Annotated[str, typer.Option(help="tenant name")] = "default",
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    type: Annotated[str | None, typer.Option("--type", help="device type (cleaning rules)")] = None,
    timezone: Annotated[str | None, typer.Option(help="IANA zone of naive timestamps")] = None,
    metadata: Annotated[str | None, typer.Option(help="JSON: location, firmware, tags")] = None,
) -> None:
    """Register a device and print its token once (only a hash is stored)."""
    from telemetra.store.catalog import create_device, tenant_id_by_name

    config = settings()
    try:
        meta = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError as error:
        raise fail(f"--metadata is not valid JSON: {error}") from None
    if timezone:
        _check_zone(timezone)

    async def go() -> str:
        engine = await _engine(config)
        try:
            async with engine.begin() as conn:
                tenant_id = await tenant_id_by_name(conn, tenant)
                return await create_device(
                    conn, tenant_id, uid, name=name, type=type, timezone=timezone, metadata=meta
                )
        finally:
            await engine.dispose()

    token = run(go())
    console.print(f"device {uid!r} created in tenant {tenant!r}. Its token (shown only once):")
    print(token)


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, KeyError):
        raise fail(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)") from None


@device_app.command("list")
def device_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List registered devices."""
    from telemetra.store.catalog import list_devices, tenant_id_by_name

    config = settings()

    async def go() -> list[Any]:
        engine = await _engine(config)
        try:
            async with engine.connect() as conn:
                tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
                return await list_devices(conn, tenant_id)
        finally:
            await engine.dispose()

    rows = run(go())
    if as_json:
        for row in rows:
            print(json.dumps({k: v for k, v in row._mapping.items() if k != "token_hash"}))
        return
    table = Table("uid", "tenant", "name", "type", "status", "last seen", "clock offset")
    from telemetra.ingest.timestamps import format_us

    for row in rows:
        table.add_row(
            row.uid, row.tenant, row.name or "", row.type or "", row.status,
            format_us(row.last_seen) if row.last_seen else "never",
            f"{row.clock_offset_us / 1e6:+.1f} s" if row.clock_offset_us is not None else "",
        )  # fmt: skip
    Console().print(table)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
