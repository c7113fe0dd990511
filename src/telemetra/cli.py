"""The ``telemetra`` command line. Thin: parse arguments, call the capability, report."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from telemetra import __version__
from telemetra.config import Settings

# Plain click help (rich_markup_mode=None) for every group: the rich panels show flags as
# taking a value ("--json <bool>") and cut environment variable names at 80 columns.
app = typer.Typer(
    help="Telemetra: IoT telemetry — ingest, clean, store and query device time series.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
tenant_app = typer.Typer(help="Manage tenants.", no_args_is_help=True, rich_markup_mode=None)
device_app = typer.Typer(help="Manage devices.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(tenant_app, name="tenant")
app.add_typer(device_app, name="device")
user_app = typer.Typer(help="Manage users.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(user_app, name="user")
rule_app = typer.Typer(
    help="Manage cleaning rules (valid range, unit, kind per metric).", rich_markup_mode=None
)
app.add_typer(rule_app, name="rule")
deadletter_app = typer.Typer(
    help="List and replay dead letters (rejected messages and values).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(deadletter_app, name="deadletter")
alert_rule_app = typer.Typer(
    help="Manage alert rules (when to raise alerts; not the cleaning rules of `telemetra rule`).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(alert_rule_app, name="alert-rule")
console = Console(stderr=True)
# Tables go to stdout; piped output is not cut at 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
T = TypeVar("T")
CURRENT_FOLDER = Path()
_told_where = False  # the embedded database's location: said once per command


def fail(message: str) -> typer.Exit:
    """Print a one-line reason and exit non-zero."""
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


def settings() -> Settings:
    from pydantic import ValidationError

    try:
        return Settings()
    except ValidationError as error:  # one line naming each variable that is wrong
        problems = "; ".join(
            f"TELEMETRA_{'_'.join(map(str, e['loc'])).upper()}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise fail(f"invalid configuration: {problems}") from None


def database_url(config: Settings) -> str:
    """The configured database; the embedded default says where it is (once per command, on
    stderr: ``--json`` output stays clean), as it depends on the working directory."""
    global _told_where
    if not config.database_url and not _told_where:
        _told_where = True
        path = (config.data_dir / "telemetra.db").resolve()
        console.print(
            f"using SQLite database {path} (TELEMETRA_DATA_DIR to change)",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
    return config.sqlalchemy_url


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine; turn expected failures into one-line errors."""
    from telemetra.store.database import connection_problem

    try:
        return asyncio.run(coro)
    except Exception as error:
        # A database that cannot be reached, logged in to or found: say which and what to do.
        problem = connection_problem(error, settings().sqlalchemy_url)
        if problem is not None:
            raise fail(problem) from None
        if isinstance(error, ValueError | LookupError | OSError):
            raise fail(str(error)) from None
        raise


async def _engine(config: Settings) -> Any:
    from telemetra.store.database import open_database
    from telemetra.store.tenancy import ALL_TENANTS

    # The CLI administers the whole installation: every tenant (Row-Level Security).
    return await open_database(database_url(config), tenant_scope=ALL_TENANTS)


def in_database(work: Callable[[Any], Awaitable[T]], *, write: bool = False) -> T:
    """Run ``work(connection)`` in one transaction on the configured database."""
    config = settings()

    async def go() -> T:
        engine = await _engine(config)
        try:
            async with engine.begin() if write else engine.connect() as conn:
                return await work(conn)
        finally:
            await engine.dispose()

    return run(go())


def version_callback(value: bool) -> None:
    if value:
        print(f"telemetra {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Telemetra: IoT telemetry — ingest, clean, store and query device time series."""
    global _told_where
    _told_where = False
    config = settings()
    from telemetra.logs import configure

    configure(config.log_format, config.log_level)


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
    app_role: Annotated[
        str | None,
        typer.Option(
            metavar="ROLE",
            help="PostgreSQL: also create (if missing) the ordinary role (NOSUPERUSER "
            "NOBYPASSRLS) that serve and ingest connect as, so Row-Level Security applies, "
            "and grant it the tables (run as their owner; repeat after upgrades)",
        ),
    ] = None,
    app_password: Annotated[
        str | None,
        typer.Option(
            metavar="PASSWORD",
            envvar="TELEMETRA_APP_ROLE_PASSWORD",
            help="with --app-role: its login password (set or changed)",
        ),
    ] = None,
) -> None:
    """Apply database migrations (TELEMETRA_DATABASE_URL), as the owner of the tables."""
    from telemetra.store.database import create_engine, grant_app_role, is_sqlite, shown_url
    from telemetra.store.database import migrate as apply
    from telemetra.store.tenancy import ALL_TENANTS

    config = settings()
    url = database_url(config)
    if app_password and not app_role:
        raise fail("--app-password needs --app-role")

    async def go() -> bool | None:
        engine = create_engine(url, tenant_scope=ALL_TENANTS)
        try:
            if app_role and is_sqlite(engine):
                raise ValueError("--app-role is for PostgreSQL (SQLite has no roles)")
            await apply(engine, revision)
            if not app_role:
                return None
            async with engine.begin() as conn:
                return await grant_app_role(conn, app_role, app_password)
        finally:
            await engine.dispose()

    created = run(go())
    console.print(f"database at revision {revision}")
    if app_role:
        from sqlalchemy.engine import make_url

        role_url = make_url(url).set(username=app_role, password="")
        console.print(
            f"role {app_role} {'created' if created else 'exists'}, granted the tables; "
            f"connect serve and ingest as {shown_url(role_url.render_as_string(False))}"
            + ("" if app_password else " (set its password with --app-password)"),
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip


def install_stop(stop: asyncio.Event) -> None:
    """Ctrl-C / SIGTERM set ``stop`` so work in hand finishes before exit."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


def serve_metrics(config: Settings) -> None:
    """With TELEMETRA_METRICS_PORT: Prometheus metrics on that port (TELEMETRA_API_HOST)."""
    if config.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(config.metrics_port, addr=config.api_host)


async def redis_bus(config: Settings) -> Any:
    """With TELEMETRA_REDIS_URL: a started live bus over Redis (close it when done); else None."""
    if not config.redis_url:
        return None
    from telemetra.live import RedisBus

    bus = RedisBus(config.redis_url)
    await bus.start()
    return bus


@app.command()
def ingest() -> None:
    """Run the MQTT ingest worker (shared subscription: run several)."""
    from telemetra.ingest.mqtt import BrokerRefused, MqttIngest, parse_mqtt_url
    from telemetra.ingest.pipeline import Pipeline, tune_gc
    from telemetra.store.database import wait_for_database
    from telemetra.store.tenancy import ALL_TENANTS

    config = settings()
    url = database_url(config)
    try:
        parse_mqtt_url(config.mqtt_url)
        routes = routes_of(config)
    except ValueError as error:
        raise fail(str(error)) from None

    serve_metrics(config)

    async def go() -> None:
        stop = asyncio.Event()
        install_stop(stop)
        # Ingest writes for every tenant: its connections start platform-wide (no round trip).
        engine = await wait_for_database(url, stop, tenant_scope=ALL_TENANTS)
        if engine is None:
            return
        bus = None
        try:
            pipeline = Pipeline(engine, config, routes)
            bus = await redis_bus(config)  # committed readings out to every `serve`'s clients
            if bus is not None:
                pipeline.listeners.append(bus.on_commit)
            tune_gc()
            await MqttIngest(config, pipeline).run(stop)
        finally:
            if bus is not None:
                await bus.close()
            await engine.dispose()

    try:
        run(go())
    except BrokerRefused as error:  # only configuration can fix it: say what, and stop
        raise fail(str(error)) from None


@app.command()
def worker() -> None:
    """Run the alert worker: rules, device status, notifications (one active; run a spare)."""
    from telemetra.alerts.worker import Worker
    from telemetra.store.database import wait_for_database
    from telemetra.store.tenancy import ALL_TENANTS

    config = settings()
    url = database_url(config)
    serve_metrics(config)

    async def go() -> None:
        stop = asyncio.Event()
        install_stop(stop)
        engine = await wait_for_database(url, stop, tenant_scope=ALL_TENANTS)
        if engine is None:
            return
        bus = None
        try:
            bus = await redis_bus(config)  # alert and status frames out to every `serve`
            await Worker(engine, config, bus.publish if bus else None).run(stop)
        finally:
            if bus is not None:
                await bus.close()
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

    tenant_id = in_database(lambda conn: create_tenant(conn, name, timezone), write=True)
    console.print(f"tenant {name!r} created (id {tenant_id})")


@tenant_app.command("list")
def tenant_list() -> None:
    """List tenants with their numbers of devices and users."""
    from telemetra.ingest.timestamps import format_us
    from telemetra.store.catalog import tenant_overview

    table = Table("id", "name", "time zone", "devices", "users", "created")
    for row in in_database(tenant_overview):
        table.add_row(
            str(row.id), row.name, row.timezone or "", str(row.devices), str(row.users),
            format_us(row.created_at),
        )  # fmt: skip
    out.print(table)


@user_app.command("list")
def user_list(tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None) -> None:
    """List users (never their password hashes)."""
    from telemetra.store.catalog import find_users, tenant_id_by_name

    async def users(conn: Any) -> list[Any]:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        return await find_users(conn, tenant_id, limit=1_000_000)

    table = Table("id", "username", "tenant", "role", "disabled")
    for row in in_database(users):
        disabled = "yes" if row.disabled else ""
        table.add_row(str(row.id), row.username, row.tenant, row.role, disabled)
    out.print(table)


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

    try:
        meta = json.loads(metadata) if metadata else {}
    except json.JSONDecodeError as error:
        raise fail(f"--metadata is not valid JSON: {error}") from None
    if timezone:
        _check_zone(timezone)

    async def create(conn: Any) -> str:
        tenant_id = await tenant_id_by_name(conn, tenant)
        return await create_device(
            conn, tenant_id, uid, name=name, type=type, timezone=timezone, metadata=meta
        )

    token = in_database(create, write=True)
    synced = _sync_broker()
    console.print(f"device {uid!r} created in tenant {tenant!r}. Its token (shown only once):")
    print(token)
    if not synced:
        raise typer.Exit(1)


def _broker_sync(out: Path) -> Any:
    """Rewrite ``out``'s passwd, acl and revocation list from the database; reload Mosquitto."""
    from telemetra.broker.mosquitto import broker_state, sync_lock, sync_state

    with sync_lock(out):
        return sync_state(out, in_database(broker_state), settings().ca_folder)


def _sync_broker() -> bool:
    """After a device change: keep the broker in step when TELEMETRA_BROKER_DIR is set.

    Says what happened; False when the broker's files could not be updated (the device change
    itself is committed: the caller still shows its result, then exits non-zero).
    """
    out = settings().broker_dir
    if out is None:
        console.print(
            "broker: TELEMETRA_BROKER_DIR is not set, so no broker files were updated "
            "(a broker without logins, like the walkthrough's, needs none; for one written "
            "by `broker-config`, set it or run `telemetra broker-config --out DIR --sync`)",
            highlight=False,
        )
        return True
    try:
        result = _broker_sync(out)
    except (ValueError, OSError) as error:
        console.print(f"[red]error:[/red] broker files not updated: {error}", highlight=False)
        return False
    style = "green" if result.reloaded else "yellow"
    console.print(f"broker: {out} updated, [{style}]{result.reload}[/{style}]", highlight=False)
    return True


def _check_zone(name: str) -> None:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(name)
    except (ValueError, KeyError):
        raise fail(f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)") from None


_SECRETS = frozenset({"token_hash", "broker_hash", "password_hash"})  # never printed


@device_app.command("list")
def device_list(
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List registered devices."""
    from telemetra.store.catalog import list_devices, tenant_id_by_name

    async def devices(conn: Any) -> list[Any]:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        return await list_devices(conn, tenant_id)

    rows = in_database(devices)
    if as_json:
        for row in rows:
            print(json.dumps({k: v for k, v in row._mapping.items() if k not in _SECRETS}))
        return
    table = Table("uid", "tenant", "name", "type", "status", "online", "last seen", "clock offset")
    from telemetra.ingest.timestamps import format_us

    for row in rows:
        online = "" if row.online is None else ("online" if row.online else "offline")
        table.add_row(
            row.uid, row.tenant, row.name or "", row.type or "", row.status, online,
            format_us(row.last_seen) if row.last_seen else "never",
            _offset_s(row.clock_offset_us),
        )  # fmt: skip
    out.print(table)


def _offset_s(offset_us: int | None) -> str:
    """A clock offset in seconds, one decimal: ``+496.4 s``; a tiny negative one is ``+0.0 s``."""
    if offset_us is None:
        return ""
    return f"{round(offset_us / 1e6, 1) + 0.0:+.1f} s"  # + 0.0: no "-0.0"


@rule_app.command("set")
def rule_set(
    metric: Annotated[str, typer.Argument(help="metric name, e.g. temperature or env.co2")],
    min_value: Annotated[float | None, typer.Option("--min", help="lowest valid value")] = None,
    max_value: Annotated[float | None, typer.Option("--max", help="highest valid value")] = None,
    unit: Annotated[str | None, typer.Option(help="canonical unit; others are converted")] = None,
    kind: Annotated[str | None, typer.Option(help="gauge or counter (resets detected)")] = None,
    device_type: Annotated[str | None, typer.Option(help="only devices of this type")] = None,
    tenant: Annotated[str | None, typer.Option(help="only this tenant")] = None,
) -> None:
    """Set the cleaning rule of a metric; unset fields inherit (workers reload within 30 s)."""
    from telemetra.store.catalog import set_rule, tenant_id_by_name

    async def store(conn: Any) -> None:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        await set_rule(
            conn, metric, tenant_id=tenant_id, device_type=device_type,
            min_value=min_value, max_value=max_value, unit=unit, kind=kind,
        )  # fmt: skip

    in_database(store, write=True)
    console.print(f"rule for {metric!r} stored")


@rule_app.command("list")
def rule_list() -> None:
    """List stored cleaning rules (built-in defaults apply where none is stored)."""
    from telemetra.store.catalog import list_rules

    table = Table("metric", "tenant", "device type", "min", "max", "unit", "kind")

    def show(value: Any) -> str:
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    for row in in_database(list_rules):
        table.add_row(
            row.metric, row.tenant or "all", row.device_type or "all", show(row.min_value),
            show(row.max_value), show(row.unit), show(row.kind),
        )  # fmt: skip
    out.print(table)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (TELEMETRA_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (TELEMETRA_API_PORT)")] = None,
) -> None:
    """Run the HTTP API (OpenAPI at /docs) with device HTTP ingest."""
    import uvicorn

    from telemetra.api.app import create_app
    from telemetra.store.database import open_database

    config = settings()
    try:
        api = create_app(config)
    except ValueError as error:
        raise fail(str(error)) from None

    async def check() -> None:  # a database that is missing or behind: one line, not a trace
        engine = await open_database(database_url(config))
        await engine.dispose()

    run(check())
    from telemetra.ingest.pipeline import tune_gc

    tune_gc()  # serve ingests over HTTP too
    uvicorn.run(
        api, host=host or config.api_host, port=port or config.api_port, log_config=None,
        proxy_headers=False,  # the app reads X-Forwarded-For from TELEMETRA_TRUSTED_PROXIES only
        timeout_graceful_shutdown=5,  # live streams never end by themselves
    )  # fmt: skip


@user_app.command("create")
def user_create(
    username: str,
    role: Annotated[str, typer.Option(help="admin, owner, operator or viewer")] = "viewer",
    tenant: Annotated[str, typer.Option(help="tenant name")] = "default",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input")
    ] = False,
) -> None:
    """Create a user (the first one: --role admin). Asks for the password."""
    from telemetra.api.auth import hash_password
    from telemetra.store.catalog import create_user, tenant_id_by_name

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        raise fail("the password needs at least 8 characters")
    hashed = hash_password(password)

    async def create(conn: Any) -> int:
        return await create_user(
            conn, await tenant_id_by_name(conn, tenant), username, hashed, role
        )

    user_id = in_database(create, write=True)
    console.print(f"user {username!r} ({role}) created in tenant {tenant!r} (id {user_id})")


@device_app.command("token")
def device_token(uid: str) -> None:
    """Rotate a device's token: prints the new one once; the old one stops working."""
    from telemetra.store.catalog import get_device, rotate_token

    async def rotate(conn: Any) -> str | None:
        row = await get_device(conn, uid, None)
        return None if row is None else await rotate_token(conn, row.id)

    token = in_database(rotate, write=True)
    if token is None:
        raise fail(f"no device {uid!r}")
    synced = _sync_broker()
    console.print(f"new token for {uid!r} (shown only once; the old one stops working):")
    print(token)
    if not synced:
        raise typer.Exit(1)


def _change_device(uid: str, change: Callable[[Any, Any], Awaitable[None]], done: str) -> None:
    """Apply ``change(connection, device row)`` to device ``uid``; bring the broker in step."""
    from telemetra.store.catalog import get_device

    async def apply(conn: Any) -> bool:
        row = await get_device(conn, uid, None)
        if row is not None:
            await change(conn, row)
        return row is not None

    if not in_database(apply, write=True):
        raise fail(f"no device {uid!r}")
    console.print(f"device {uid!r} {done}")
    if not _sync_broker():
        raise typer.Exit(1)


def _set_status(status: str) -> Callable[[Any, Any], Awaitable[None]]:
    from telemetra.store.catalog import update_device

    return lambda conn, row: update_device(conn, row.id, {"status": status})


@device_app.command("disable")
def device_disable(uid: str) -> None:
    """Disable a device: its data is refused and (with TELEMETRA_BROKER_DIR) it is off the
    broker at once, token and certificate alike."""
    _change_device(uid, _set_status("disabled"), "is disabled")


@device_app.command("enable")
def device_enable(uid: str) -> None:
    """Enable a disabled device again."""
    _change_device(uid, _set_status("active"), "is active")


@device_app.command("delete")
def device_delete(
    uid: str,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Delete a device with all its readings; its certificates are revoked for good and its
    open alerts resolved."""
    from telemetra.alerts.store import forget_device
    from telemetra.store.catalog import delete_device

    async def remove(conn: Any, row: Any) -> None:
        await forget_device(conn, row.tenant_id, row.uid, "telemetra device delete")
        await delete_device(conn, row.id)

    if not yes:
        typer.confirm(f"delete device {uid!r} and all its data?", abort=True)
    _change_device(uid, remove, "deleted")


@device_app.command("cert")
def device_cert(
    uid: str,
    out: Annotated[Path, typer.Option(help="folder for <uid>.zip")] = CURRENT_FOLDER,
    host: Annotated[str, typer.Option(help="broker host named in the bundle's README")] = (
        "<broker-host>"
    ),
    port: Annotated[int, typer.Option(help="broker TLS port named in the README")] = 8883,
) -> None:
    """Issue a client certificate (CN = device id) signed by the installation CA, as a zip."""
    from telemetra.certs import DeviceCA, certificate_facts, device_bundle_zip, issue_client_cert
    from telemetra.store.catalog import get_device, record_certificate

    config = settings()

    async def find(conn: Any) -> Any:
        return await get_device(conn, uid, None)

    device = in_database(find)
    if device is None:
        raise fail(f"no device {uid!r}; create it first with `telemetra device create`")
    try:
        ca = DeviceCA.load_or_create(config.ca_folder)
        issued = issue_client_cert(ca, uid)
        bundle = device_bundle_zip(ca, uid, host=host, port=port, issued=issued)
    except ValueError as error:
        raise fail(str(error)) from None

    async def record(conn: Any) -> None:  # for the broker's revocation list
        await record_certificate(conn, device.tenant_id, uid, *certificate_facts(issued[0]))

    in_database(record, write=True)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{uid}.zip"
    target.write_bytes(bundle)
    target.chmod(0o600)
    console.print(f"certificate, key and CA for {uid!r} written to {target} (keep it secret)")


@app.command("broker-config")
def broker_config(
    out: Annotated[Path, typer.Option(help="folder for mosquitto.conf, passwd, acl, certs")],
    ingest_password: Annotated[
        str | None,
        typer.Option(envvar="TELEMETRA_MQTT_PASSWORD", help="password of the ingest user"),
    ] = None,
    chirpstack_password: Annotated[
        str | None,
        typer.Option(
            envvar="TELEMETRA_CHIRPSTACK_MQTT_PASSWORD",
            help="also a login for ChirpStack's MQTT integration: user 'chirpstack', "
            "topics application/# (with --mtls: chirpstack.crt/.key)",
        ),
    ] = None,
    sync: Annotated[
        bool,
        typer.Option(
            "--sync",
            help="only rewrite passwd and acl from the devices table and reload Mosquitto "
            "(keeps certificates, listeners and the ingest login)",
        ),
    ] = False,
    hostname: Annotated[
        list[str] | None, typer.Option(help="names/IPs in the server certificate (repeat)")
    ] = None,
    tls_port: Annotated[
        int, typer.Option(help="TLS listener port (must be free, or this broker's own)")
    ] = 8883,
    plain_port: Annotated[
        int | None,
        typer.Option(help="also listen without TLS, e.g. 1883 (default: no plain TCP)"),
    ] = None,
    mtls: Annotated[
        bool, typer.Option(help="require client certificates (CN = device id)")
    ] = False,
    bind: Annotated[str, typer.Option(help="listener address")] = "0.0.0.0",  # noqa: S104
    user: Annotated[
        str | None,
        typer.Option(help="system user Mosquitto switches to when started as root (mosquitto)"),
    ] = None,
) -> None:
    """Write a Mosquitto configuration (TLS/mTLS, passwords, ACL) for the registered devices.

    Works as root (Mosquitto then runs as --user, which gets read access to its files) and as
    an ordinary user. The ingest user may read the telemetry topics of TELEMETRA_ROUTES and
    write their acks and dead letters; payloads over TELEMETRA_MAX_PAYLOAD_BYTES are refused.
    """
    from telemetra.broker.mosquitto import broker_state, split_accounts, write_config
    from telemetra.certs import DeviceCA
    from telemetra.store.catalog import devices_without_broker_password

    if sync:
        try:
            result = _broker_sync(out)
        except (ValueError, OSError) as error:
            raise fail(f"broker files not updated: {error}") from None
        for uid, reason in result.skipped:
            console.print(f"[yellow]skipped[/yellow] {uid!r}: {reason}")
        style = "green" if result.reloaded else "yellow"
        console.print(
            f"{out}: passwd and acl written for {result.devices} devices; "
            f"[{style}]{result.reload}[/{style}]",
            highlight=False,
        )
        return
    if not ingest_password:
        raise fail("--ingest-password (or TELEMETRA_MQTT_PASSWORD) is needed for a new config")
    config = settings()
    state = in_database(broker_state)
    accounts = state.accounts
    _, skipped = split_accounts(accounts, "telemetra-ingest")
    missing = in_database(devices_without_broker_password)
    try:
        conf = write_config(
            out, accounts, DeviceCA.load_or_create(config.ca_folder), blocked=state.blocked,
            revoked=state.revoked,
            hostnames=hostname or ["localhost", "127.0.0.1"], tls_port=tls_port,
            plain_port=plain_port, require_certificate=mtls, ingest_password=ingest_password,
            chirpstack_password=chirpstack_password, user=user, bind=bind,
            routes=routes_of(config), max_payload_bytes=config.max_payload_bytes,
        )  # fmt: skip
    except ValueError as error:
        raise fail(str(error)) from None
    for uid, reason in skipped:
        console.print(f"[yellow]skipped[/yellow] {uid!r}: {reason}")
    for uid in missing:
        console.print(
            f"[yellow]skipped[/yellow] {uid!r}: no broker password yet; "
            f"`telemetra device token {uid}` issues one"
        )
    console.print(
        f"{conf} written for {len(accounts) - len(skipped)} devices; "
        f"see {out / 'RELOAD.txt'} for reloading a running Mosquitto"
    )
    folder = conf.parent
    login = (
        f"TELEMETRA_MQTT_CERT_FILE={folder / 'ingest.crt'} "
        f"TELEMETRA_MQTT_KEY_FILE={folder / 'ingest.key'}"
        if mtls
        else "TELEMETRA_MQTT_PASSWORD=<the --ingest-password>"
    )
    console.print(
        f"start it: mosquitto -c {conf} -d\n"
        f"ingest:   TELEMETRA_MQTT_URL=mqtts://{(hostname or ['localhost'])[0]}:{tls_port} "
        f"TELEMETRA_MQTT_USERNAME=telemetra-ingest {login} "
        f"TELEMETRA_MQTT_CA_FILE={folder / 'ca.pem'} telemetra ingest",
        highlight=False,
        soft_wrap=True,
    )


@app.command("sim")
def sim_(
    devices: Annotated[int, typer.Option(help="number of simulated devices")] = 10,
    rate: Annotated[float, typer.Option(help="messages/s in total (0: as fast as possible)")] = 1.0,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    count: Annotated[int | None, typer.Option(help="stop after this many messages")] = None,
    faults: Annotated[
        str, typer.Option(help="e.g. 'drift,dup=0.05,garbage=0.01', 'all' or 'none'")
    ] = "none",
    formats: Annotated[str, typer.Option(help="native,event,chirpstack,tele")] = "native",
    metrics: Annotated[int, typer.Option(help="numeric metrics per message")] = 10,
    seed: Annotated[int, typer.Option(help="same seed, same fleet")] = 0,
    qos: Annotated[int, typer.Option(min=0, max=1)] = 1,
    processes: Annotated[int, typer.Option(help="publisher processes")] = 1,
    prefix: Annotated[str, typer.Option(help="device id prefix")] = "sim",
    register: Annotated[
        bool,
        typer.Option(
            "--register",
            help="first create the fleet's devices (default tenant, type sim) in the "
            "configured database; idempotent",
        ),
    ] = False,
    ack_wait: Annotated[
        float,
        typer.Option(help="stop waiting for ingest's acks after this many quiet seconds (0: off)"),
    ] = 10.0,
) -> None:
    """Publish a simulated fleet (realistic signals, faults on demand) to TELEMETRA_MQTT_URL.

    Then reports what ingest stored, from its ack topics and dead letters; exits non-zero
    when nothing was stored.
    """
    from rich.progress import Progress

    from telemetra import sim

    config = settings()
    if duration is None and count is None:
        raise fail("give --duration or --count so the simulator stops by itself")
    try:
        chosen = sim.Faults.parse(faults)
    except ValueError as error:
        raise fail(f"--faults: {error}") from None
    try:
        fleet_formats, routes = tuple(formats.split(",")), routes_of(config)
        members = sim.fleet_devices(devices, fleet_formats, prefix, seed)
    except ValueError as error:
        raise fail(str(error)) from None
    if register:
        done = in_database(lambda conn: sim.register_fleet(conn, members), write=True)
        console.print(
            f"registered {done.created} devices in the default tenant "
            f"({done.existing} were there already)"
        )
        if done.inactive:
            console.print(
                f"[yellow]{len(done.inactive)} of them are disabled[/yellow] and will be "
                f"rejected, e.g. {done.inactive[0]!r}: `telemetra device enable ID`"
            )
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("publishing", total=count)
        try:
            report = sim.run(
                config.mqtt_url, devices=devices, rate=rate, duration_s=duration, count=count,
                seed=seed, faults=chosen, formats=fleet_formats,
                metrics_per_message=metrics, qos=qos, processes=processes, prefix=prefix,
                username=config.mqtt_username, password=config.mqtt_password,
                progress=lambda n: progress.update(task, completed=n),
                confirm=ack_wait > 0, routes=routes, ack_wait_s=ack_wait,
            )  # fmt: skip
        except (sim.SimError, ValueError) as error:
            raise fail(str(error)) from None
    console.print(
        f"sent {report.sent} messages in {report.elapsed_s:.1f} s ({report.rate:.0f}/s); "
        f"by kind: {dict(report.by_kind)}"
    )
    outcomes = report.outcomes
    if outcomes is not None:
        if outcomes.subscribe_error:
            console.print(
                f"[yellow]what ingest stored is unknown:[/yellow] {outcomes.subscribe_error}"
            )
        elif outcomes.summary():
            console.print(outcomes.summary(), highlight=False, soft_wrap=True)
        problem = outcomes.problem(config.mqtt_url, ack_wait)
        if problem is not None:
            raise fail(problem)


@app.command("import")
def import_(
    path: Annotated[
        str, typer.Argument(metavar="FILE", help="CSV, JSON lines (.jsonl/.ndjson/.json), Parquet")
    ],
    format: Annotated[
        str | None,
        typer.Option("--format", help="csv, jsonl or parquet (default: from the file suffix)"),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="device id for rows and lines that name none")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="messages per transaction")] = 1000,
) -> None:
    """Import readings from a file through the same decoding and cleaning as live data.

    CSV: a header row; long form `device,ts,metric,value[,text,unit,event_id]` or wide form
    `device,ts,<metric>,<metric>,...`. JSON lines: one native-format object or array per line
    with a `device` key. Parquet: as CSV. Files of `telemetra export` import back (their flags,
    ts_device and received_at columns are ignored: cleaning here sets its own). Rejected lines
    are kept as dead letters with their line number; importing a file twice stores nothing
    twice.
    """
    from pathlib import Path

    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from telemetra.ingest.importer import detect_format, import_file, import_pipeline

    file = Path(path)
    config = settings()
    if not file.is_file():
        raise fail(f"no such file: {file}")
    try:
        kind = detect_format(file, format)
    except ValueError as error:
        raise fail(str(error)) from None
    size = file.stat().st_size

    async def go() -> Any:
        engine = await _engine(config)
        try:
            with Progress(
                "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
            ) as bar:  # fmt: skip
                task = bar.add_task(f"importing {file.name}", total=size)
                return await import_file(
                    import_pipeline(engine, config), file, fmt=kind, device=device,
                    batch_size=batch_size,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )  # fmt: skip
        finally:
            await engine.dispose()

    summary = run(go())
    table = Table("import", str(file), title=None)
    table.add_row("rows read", f"{summary.rows:,}")
    table.add_row("messages", f"{summary.messages:,}")
    table.add_row("readings accepted", f"{summary.accepted:,}")
    table.add_row("  new", f"{summary.stored:,}")
    table.add_row("  already stored", f"{summary.duplicates:,}")
    table.add_row("rejected", f"{summary.rejected:,}")
    for reason, n in sorted(summary.rejected_by_reason.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {reason}", f"{n:,}")
    rate = summary.rows / summary.seconds if summary.seconds else 0.0
    table.add_row("time", f"{summary.seconds:.1f} s ({rate:,.0f} rows/s)")
    out.print(table)
    for r in summary.rejections[:10]:
        console.print(f"line {r.line}: {r.reason}: {r.detail}", highlight=False, markup=False)
    if len(summary.rejections) > 10 or summary.rejected > len(summary.rejections):
        console.print("… all rejections are kept as dead letters (source 'import').")
    if summary.messages and not summary.accepted:
        raise fail(f"no readings accepted from {file} ({summary.rejected:,} rejected)")


@app.command("export")
def export_(
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="the device's id")],
    out_path: Annotated[
        str,
        typer.Option(
            "--out", metavar="FILE", help="file to write (replaced when complete); - for stdout"
        ),
    ],
    start: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="TIME",
            help="start (inclusive): ISO-8601 with Z or an offset, epoch ms, now, or -30m/-24h/-7d",
        ),
    ] = "-24h",
    end: Annotated[
        str, typer.Option("--to", metavar="TIME", help="end (exclusive), same forms")
    ] = "now",
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", metavar="NAME", help="only this metric; repeatable"),
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="csv|jsonl|parquet",
            help="default: from the --out suffix, else csv",
        ),
    ] = None,
) -> None:
    """Export a device's raw readings to a file that `telemetra import` reads back.

    The same files as `GET /api/v1/devices/{id}/export`: CSV and Parquet with the columns
    device,ts,metric,value,text,unit,flags,ts_device,received_at; JSON lines in the native
    event form. By event time, streamed, with progress on stderr.
    """
    import os
    import sys
    import time
    from pathlib import Path

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    from telemetra.store import export, timerange
    from telemetra.store.catalog import get_device

    to_stdout = out_path == "-"
    path = Path(out_path)
    fmt = (format or ("csv" if to_stdout else path.suffix.lstrip(".") or "csv")).lower()
    fmt = {"ndjson": "jsonl", "pq": "parquet"}.get(fmt, fmt)
    if fmt not in export.FORMATS:
        what = f"format {format!r}" if format else f"file suffix {path.suffix!r}"
        raise fail(f"unknown {what}; expected csv, jsonl or parquet (use --format)")
    try:
        s, e = timerange.time_range(start, end, names=("--from", "--to"))
    except timerange.ParamError as error:
        hint = f"; {error.problem}" if error.problem.startswith("expected") else ""
        raise fail(f"{error}{hint}") from None
    config = settings()

    async def go() -> export.Export:
        engine = await _engine(config)
        try:
            async with engine.connect() as conn:
                found = await get_device(conn, device, None)
            if found is None:
                raise LookupError(f"no device {device!r} (telemetra device list shows them)")
            readings = export.Export(
                engine, int(found.tenant_id), int(found.id), device, found.type, s, e,
                metrics=list(dict.fromkeys(metric)) if metric else None,
            )  # fmt: skip
            if to_stdout:
                await export.write_file(readings, fmt, sys.stdout.buffer)
                return readings
            partial = path.with_name(path.name + ".part")
            with Progress(
                "[progress.description]{task.description}", BarColumn(), TaskProgressColumn(),
                "{task.fields[rows]:,} readings", TimeRemainingColumn(), console=console,
                transient=True,
            ) as bar:  # fmt: skip
                task = bar.add_task(f"exporting {device}", total=e - s, rows=0)

                def progress(done: export.Export) -> None:
                    bar.update(task, completed=done.reached - s, rows=done.rows)

                try:
                    with partial.open("wb") as f:
                        await export.write_file(readings, fmt, f, progress)
                    os.replace(partial, path)
                except BaseException:
                    partial.unlink(missing_ok=True)  # never leave half a file behind
                    raise
            return readings
        finally:
            await engine.dispose()

    started = time.monotonic()
    try:
        done = run(go())
    except export.ParquetUnavailable as error:
        raise fail(str(error)) from None
    where = "stdout" if to_stdout else f"{path} ({path.stat().st_size:,} bytes)"
    console.print(
        f"exported {done.rows:,} readings of {device} ({fmt}) to {where} in "
        f"{time.monotonic() - started:.1f} s",
        highlight=False, markup=False, soft_wrap=True,
    )  # fmt: skip


@app.command("readings")
def readings_(
    device: Annotated[str, typer.Argument(metavar="DEVICE", help="the device's id")],
    start: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="TIME",
            help="start (inclusive): ISO-8601 with Z or an offset, epoch ms, now, or -30m/-24h/-7d",
        ),
    ] = "-1h",
    end: Annotated[
        str, typer.Option("--to", metavar="TIME", help="end (exclusive), same forms")
    ] = "now",
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", metavar="NAME", help="only this metric; repeatable"),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="at most this many readings, oldest first")
    ] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
    as_csv: Annotated[
        bool, typer.Option("--csv", help="CSV in `telemetra export`'s columns (imports back)")
    ] = False,
) -> None:
    """Show a device's stored readings in a time range (no `serve` needed).

    By event time, oldest first; value with its unit, and the quality flags of each reading.
    For whole ranges to a file, see `telemetra export`.
    """
    import csv

    from telemetra.ingest.timestamps import format_us
    from telemetra.model import flag_names
    from telemetra.store import export

    if as_json and as_csv:
        raise fail("choose one of --json and --csv")
    s, e = _time_range(start, end)
    config = settings()

    async def go() -> tuple[export.Export, list[Any], bool]:
        engine = await _engine(config)
        try:
            found = await _find_device(engine, device)
            chosen = export.Export(
                engine, int(found.tenant_id), int(found.id), device, found.type, s, e,
                metrics=list(dict.fromkeys(metric)) if metric else None,
                page_size=min(limit + 1, export.PAGE),
            )  # fmt: skip
            rows: list[Any] = []
            async for page in chosen.pages():  # the last page read tells whether there is more
                rows.extend(page)
                if len(rows) > limit:
                    break
            return chosen, rows[:limit], len(rows) > limit
        finally:
            await engine.dispose()

    found, rows, more = run(go())
    if as_csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(export.COLUMNS)
        for r in rows:
            flags = export.FLAG_SEPARATOR.join(flag_names(r.flags))
            writer.writerow(
                (
                    device, format_us(r.ts), r.metric, "" if r.value is None else repr(r.value),
                    r.text or "", found.unit(r) or "", flags,
                    "" if r.ts_device is None else format_us(r.ts_device), format_us(r.received_at),
                )
            )  # fmt: skip
    elif as_json:
        for r in rows:
            entry = {
                "device": device, "ts": format_us(r.ts), "metric": r.metric,
                "value": r.text if r.value is None else r.value, "unit": found.unit(r),
                "flags": flag_names(r.flags),
            }  # fmt: skip
            print(json.dumps(entry, ensure_ascii=False))
    else:
        table = Table("time (UTC)", "metric", "value", "unit", "flags")
        for r in rows:
            value = r.text if r.value is None else f"{r.value:g}"
            table.add_row(
                format_us(r.ts), r.metric, value, found.unit(r) or "", " ".join(flag_names(r.flags))
            )
        out.print(table)
    if more:
        console.print(
            f"only the first {limit:,} readings; raise --limit or narrow --from/--to",
            highlight=False, markup=False,
        )  # fmt: skip
    elif not rows:
        console.print(
            f"no readings of {device} from {format_us(s)} to {format_us(e)}",
            highlight=False, markup=False,
        )  # fmt: skip


@app.command("latest")
def latest_(
    devices: Annotated[
        list[str] | None,
        typer.Argument(metavar="[DEVICE]...", help="these devices (default: every device)"),
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", metavar="NAME", help="only this metric; repeatable"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """Show the newest value of each metric of each device (no `serve` needed)."""
    from telemetra.ingest.timestamps import format_us
    from telemetra.model import flag_names
    from telemetra.store import query

    config = settings()

    async def go() -> list[Any]:
        engine = await _engine(config)
        try:
            ids = None
            if devices:
                ids = [int((await _find_device(engine, uid)).id) for uid in devices]
            async with engine.connect() as conn:
                return await query.latest(
                    conn, None, device_ids=ids, metrics=list(metric) if metric else None
                )
        finally:
            await engine.dispose()

    values = run(go())
    if as_json:
        for v in values:
            entry = {
                "device": v.device_uid, "metric": v.metric, "ts": format_us(v.ts),
                "value": v.text if v.value is None else v.value, "flags": flag_names(v.flags),
                "received_at": format_us(v.received_at),
            }  # fmt: skip
            print(json.dumps(entry, ensure_ascii=False))
        return
    table = Table("device", "metric", "value", "time (UTC)", "flags")
    for v in values:
        value = v.text if v.value is None else f"{v.value:g}"
        table.add_row(v.device_uid, v.metric, value, format_us(v.ts), " ".join(flag_names(v.flags)))
    out.print(table)
    if not values:
        console.print("no values stored yet", highlight=False, markup=False)


def _time_range(start: str, end: str) -> tuple[int, int]:
    """``--from``/``--to`` as µs since the epoch, or a one-line error."""
    from telemetra.store import timerange

    try:
        return timerange.time_range(start, end, names=("--from", "--to"))
    except timerange.ParamError as error:
        hint = f"; {error.problem}" if error.problem.startswith("expected") else ""
        raise fail(f"{error}{hint}") from None


async def _find_device(engine: Any, uid: str) -> Any:
    """Device ``uid`` in any tenant (the CLI is platform-wide); LookupError if there is none."""
    from telemetra.store.catalog import get_device

    async with engine.connect() as conn:
        found = await get_device(conn, uid, None)
    if found is None:
        raise LookupError(f"no device {uid!r} (telemetra device list shows them)")
    return found


_FROM_HELP = "receive time from (inclusive): ISO-8601 with Z or an offset, epoch ms, now, -24h"


def _dead_letter_selection(
    tenant: str | None, device: str | None, reason: str | None, start: str | None,
    end: str | None, replayed: bool | None = None,
) -> Callable[[Any], Awaitable[Any]]:  # fmt: skip
    """The selection of `deadletter list/replay`, once the tenant name is looked up."""
    from telemetra.ingest.replay import time_window
    from telemetra.store.catalog import tenant_id_by_name
    from telemetra.store.deadletters import Selection
    from telemetra.store.timerange import ParamError

    try:
        since, until = time_window(start, end, names=("--from", "--to"))
    except ParamError as error:
        raise fail(f"{error}; {error.problem}") from None

    async def select(conn: Any) -> Selection:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        return Selection(tenant_id, device, reason, since, until, replayed)

    return select


_TenantOpt = Annotated[
    str | None, typer.Option(metavar="NAME", help="only this tenant (default: all)")
]
_DeviceOpt = Annotated[str | None, typer.Option(metavar="ID", help="only this device id")]
_ReasonOpt = Annotated[
    str | None,
    typer.Option(
        metavar="REASON",
        help="only this reason: unknown_device, out_of_range, future_timestamp, …",
    ),
]
_FromOpt = Annotated[str | None, typer.Option("--from", metavar="TIME", help=_FROM_HELP)]
_ToOpt = Annotated[
    str | None, typer.Option("--to", metavar="TIME", help="receive time to (exclusive), same forms")
]


@deadletter_app.command("list")
def deadletter_list(
    tenant: _TenantOpt = None,
    device: _DeviceOpt = None,
    reason: _ReasonOpt = None,
    start: _FromOpt = None,
    end: _ToOpt = None,
    replayed: Annotated[
        bool | None,
        typer.Option("--replayed/--not-replayed", help="only replayed ones, or only the others"),
    ] = None,
    limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="at most this many, newest first")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List dead letters (rejected messages and values), newest first."""
    from telemetra.ingest.timestamps import format_us
    from telemetra.store.deadletters import page

    selecting = _dead_letter_selection(tenant, device, reason, start, end, replayed)

    async def letters(conn: Any) -> Any:
        return await page(conn, await selecting(conn), limit=limit)

    found = in_database(letters).items
    if as_json:
        for d in found:
            print(json.dumps({
                "id": d.id, "device": d.device_uid, "source": d.source, "topic": d.topic,
                "reason": d.reason, "detail": d.detail, "index": d.entry_index,
                "metric": d.metric, "payload_size": d.payload_size,
                "received_at": format_us(d.received_at),
                "payload": None if d.payload is None else d.payload.decode("utf-8", "replace"),
                "replayed": None if d.replayed_at is None else {
                    "at": format_us(d.replayed_at), "outcome": d.replay_outcome,
                    "detail": d.replay_detail,
                },
            }))  # fmt: skip
        return
    table = Table("id", "received", "device", "reason", "detail", "replayed")
    for d in found:
        last = ""
        if d.replayed_at is not None:
            last = f"{d.replay_outcome} at {format_us(d.replayed_at)}: {d.replay_detail}"
        table.add_row(
            str(d.id), format_us(d.received_at), d.device_uid or "", d.reason, d.detail, last
        )
    out.print(table)
    if len(found) == limit:
        console.print(f"… the newest {limit}; --limit for more")


@deadletter_app.command("replay")
def deadletter_replay(
    tenant: _TenantOpt = None,
    device: _DeviceOpt = None,
    reason: _ReasonOpt = None,
    start: _FromOpt = None,
    end: _ToOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="decode and clean only: store and mark nothing")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="at most this many dead letters")
    ] = None,
) -> None:
    """Run dead letters again through today's devices, cleaning rules and clock offsets.

    For after registering a device, fixing a cleaning rule or once a device's clock offset is
    known. Replaying twice stores nothing twice; a replayed dead letter is kept and marked
    (stored, rejected again with the reason, or skipped: a payload cut at
    TELEMETRA_DEADLETTER_PAYLOAD_BYTES cannot be replayed). Dead letters a replay stored are
    not taken again. Devices are never registered by a replay.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from telemetra.ingest.replay import replay

    selecting = _dead_letter_selection(tenant, device, reason, start, end)
    config = settings()

    async def go() -> Any:
        engine = await _engine(config)
        try:
            async with engine.connect() as conn:
                selection = await selecting(conn)
            with Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), console=console, transient=True,
            ) as bar:  # fmt: skip
                task = bar.add_task("replaying dead letters", total=None)
                return await replay(
                    engine, config, selection, dry_run=dry_run, limit=limit,
                    progress=lambda done, total: bar.update(task, completed=done, total=total),
                )  # fmt: skip
        finally:
            await engine.dispose()

    report = run(go())
    table = Table("dry run: nothing stored or marked" if dry_run else "replay", "")
    table.add_row("dead letters", f"{report.dead_letters:,}")
    table.add_row("messages replayed", f"{report.messages:,}")
    table.add_row("readings accepted", f"{report.accepted:,}")
    if not dry_run:
        table.add_row("  new", f"{report.stored:,}")
        table.add_row("  already stored", f"{report.accepted - report.stored:,}")
    table.add_row("dead letters resolved", f"{report.resolved:,}")
    table.add_row("rejected again", f"{sum(report.rejected.values()):,}")
    for why, n in sorted(report.rejected.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {why}", f"{n:,}")
    table.add_row("skipped", f"{sum(report.skipped.values()):,}")
    for why, n in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        table.add_row(f"  {why}", f"{n:,}")
    if report.remaining:
        table.add_row("left for another run (--limit)", f"{report.remaining:,}")
    out.print(table)
    if report.skipped.get("payload_truncated"):
        console.print(
            "payload_truncated: only part of the payload was kept; raise "
            "TELEMETRA_DEADLETTER_PAYLOAD_BYTES to keep whole messages from now on"
        )


# --- alert rules ------------------------------------------------------------------------------

_RuleTenantOpt = Annotated[
    str | None, typer.Option(metavar="NAME", help="only this tenant (default: every tenant)")
]


@alert_rule_app.command("list")
def alert_rule_list(
    tenant: _RuleTenantOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines (the rules as written, no secrets)")
    ] = False,
) -> None:
    """List alert rules, by tenant and name (channel secrets are never shown)."""
    from telemetra.alerts.documents import shown_channels
    from telemetra.alerts.store import list_rules
    from telemetra.store.catalog import tenant_id_by_name, tenant_overview

    async def rules(conn: Any) -> tuple[list[Any], dict[int, str]]:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        names = {int(t.id): str(t.name) for t in await tenant_overview(conn)}
        return await list_rules(conn, tenant_id), names

    found, names = in_database(rules)
    if as_json:
        for r in found:
            shown = {**r.definition, "channels": shown_channels(r.channels)}
            print(json.dumps({"id": r.id, "tenant": names.get(r.tenant_id), **shown},
                             ensure_ascii=False))  # fmt: skip
        return
    table = Table("id", "tenant", "name", "kind", "metric", "severity", "enabled", "scope",
                  "channels")  # fmt: skip
    for r in found:
        scope = r.definition.get("scope") or {}
        where = ", ".join(f"{k}={v}" for k, v in scope.items()) or "all devices"
        table.add_row(
            str(r.id), names.get(r.tenant_id, "?"), r.name, r.kind,
            r.definition.get("metric") or "", r.severity, "yes" if r.enabled else "no", where,
            " ".join(str(c.get("kind")) for c in r.channels),
        )  # fmt: skip
    out.print(table)
    if not found:
        console.print("no alert rules yet: `telemetra alert-rule create FILE` adds some")


@alert_rule_app.command("create")
def alert_rule_create(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="JSON or YAML (.yaml/.yml): a rule or a list")
    ],
    tenant: Annotated[str, typer.Option(metavar="NAME", help="the rules' tenant")] = "default",
    replace: Annotated[
        bool, typer.Option("--replace", help="replace the tenant's rules of the same names")
    ] = False,
) -> None:
    """Create alert rules from a file, all or none (each checked first; errors name the rule
    and the field)."""
    from telemetra.alerts.documents import read_rules
    from telemetra.alerts.store import RuleNameTaken, put_rules
    from telemetra.store.catalog import tenant_id_by_name

    try:
        rules = read_rules(file)
    except (ValueError, OSError) as error:
        raise fail(str(error)) from None
    definitions = [r.model_dump(mode="json") for r in rules]

    async def store(conn: Any) -> list[Any]:
        tenant_id = await tenant_id_by_name(conn, tenant)
        try:
            return await put_rules(conn, tenant_id, definitions, replace=replace)
        except RuleNameTaken as error:
            taken = str(error).split(";")[0]
            raise ValueError(f"{taken} in tenant {tenant!r}: --replace replaces it") from None

    done = in_database(store, write=True)
    for rule, created in done:
        verb = "created" if created else "replaced"
        console.print(f"alert rule {rule.name!r} {verb} (id {rule.id}) in tenant {tenant!r}",
                      highlight=False, markup=False)  # fmt: skip


@alert_rule_app.command("delete")
def alert_rule_delete(
    rule: Annotated[str, typer.Argument(metavar="ID|NAME", help="the rule's id or name")],
    tenant: Annotated[
        str | None, typer.Option(metavar="NAME", help="the rule's tenant (for a name in several)")
    ] = None,
) -> None:
    """Delete an alert rule; its open alerts are resolved (by "cli"), its alerts kept."""
    from telemetra.alerts.store import delete_rule, get_rule, rules_named
    from telemetra.store.catalog import tenant_id_by_name

    async def remove(conn: Any) -> Any:
        tenant_id = await tenant_id_by_name(conn, tenant) if tenant else None
        is_id = rule.isascii() and rule.isdecimal() and int(rule) < 2**63  # a 64-bit id
        found = await get_rule(conn, int(rule), tenant_id) if is_id else None
        candidates = [found] if found is not None else await rules_named(conn, rule, tenant_id)
        if not candidates:
            where = f" in tenant {tenant!r}" if tenant else ""
            raise LookupError(
                f"no alert rule {rule!r}{where} (`telemetra alert-rule list` shows them)"
            )
        if len(candidates) > 1:
            raise LookupError(
                f"{len(candidates)} tenants have an alert rule named {rule!r}: say which with "
                "--tenant, or give the rule's id"
            )
        resolved = await delete_rule(conn, candidates[0], "cli")
        return candidates[0], resolved

    gone, resolved = in_database(remove, write=True)
    more = f"; {len(resolved)} open alert(s) resolved" if resolved else ""
    console.print(f"alert rule {gone.name!r} (id {gone.id}) deleted{more}",
                  highlight=False, markup=False)  # fmt: skip


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
