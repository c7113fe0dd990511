"""The command line: help, administration, errors as one line, schema policy."""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from telemetra.cli import app

from conftest import PG_SERVER, free_port, missing


def now_us() -> int:
    return time.time_ns() // 1000


runner = CliRunner()


def invoke(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.output


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {"TELEMETRA_DATA_DIR": str(tmp_path / "data"), "TELEMETRA_DATABASE_URL": ""}


def test_help_lists_the_commands() -> None:
    code, out = invoke({}, "--help")
    assert code == 0
    for command in ("migrate", "ingest", "import", "sim", "tenant", "device"):
        assert command in out


def test_device_administration_on_the_embedded_default(sqlite_env: dict[str, str]) -> None:
    # No migrate first: the embedded SQLite default migrates itself.
    code, out = invoke(sqlite_env, "tenant", "create", "school", "--timezone", "Europe/Vienna")
    assert code == 0, out
    code, out = invoke(
        sqlite_env, "device", "create", "esp32-1", "--tenant", "school", "--type", "climate",
        "--metadata", '{"location": {"lat": 48.2, "lon": 16.4}, "firmware": "1.2.0"}',
    )  # fmt: skip
    assert code == 0, out
    token = out.strip().splitlines()[-1]
    assert len(token) >= 40
    # Without TELEMETRA_BROKER_DIR a broker without logins (the walkthrough's) needs nothing.
    assert "a broker without logins, like the walkthrough's, needs none" in " ".join(out.split())
    code, out = invoke(sqlite_env, "device", "list", "--json")
    assert code == 0 and '"uid": "esp32-1"' in out and token not in out
    assert "token_hash" not in out and "broker_hash" not in out  # hashes stay in the database
    assert '"firmware": "1.2.0"' in out
    code, out = invoke(sqlite_env, "tenant", "list")
    assert code == 0 and "school" in out and "default" in out, out
    line = next(x for x in out.splitlines() if "school" in x)
    assert "Europe/Vienna" in line and " 1 " in line  # one device, no users yet

    code, out = invoke(sqlite_env, "device", "create", "esp32-1")
    assert code == 1 and "already exists" in out
    code, out = invoke(sqlite_env, "device", "create", "bad/id")
    assert code == 1 and "invalid device id" in out
    code, out = invoke(sqlite_env, "device", "create", "x", "--tenant", "nope")
    assert code == 1 and "no tenant named 'nope'" in out
    code, out = invoke(sqlite_env, "device", "create", "y", "--timezone", "Mars/Base")
    assert code == 1 and "unknown time zone" in out


def test_device_list_shows_a_tiny_negative_clock_offset_as_zero(
    sqlite_env: dict[str, str],
) -> None:
    for uid in ("on-time", "ahead"):
        assert invoke(sqlite_env, "device", "create", uid)[0] == 0
    db = Path(sqlite_env["TELEMETRA_DATA_DIR"]) / "telemetra.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE devices SET clock_offset_us = -30000 WHERE uid = 'on-time'")
        conn.execute("UPDATE devices SET clock_offset_us = 496400000 WHERE uid = 'ahead'")
    code, out = invoke({**sqlite_env, "COLUMNS": "200"}, "device", "list")
    assert code == 0, out
    line = {
        uid: next(x for x in out.splitlines() if f" {uid} " in x) for uid in ("on-time", "ahead")
    }
    assert "+0.0 s" in line["on-time"] and "-0.0" not in out
    assert "+496.4 s" in line["ahead"]


def test_server_database_must_be_migrated_explicitly() -> None:
    name = f"telemetra_cli_{uuid.uuid4().hex[:8]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(PG_SERVER + "/postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except OSError:
        missing("PostgreSQL")
    env = {"TELEMETRA_DATABASE_URL": f"{PG_SERVER}/{name}"}
    try:
        code, out = invoke(env, "device", "list")
        assert code == 1 and "run `telemetra migrate`" in out
        code, out = invoke(env, "migrate")
        assert code == 0, out
        code, out = invoke(env, "device", "list")
        assert code == 0, out
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_cleaning_rules_are_data(sqlite_env: dict[str, str]) -> None:
    code, out = invoke(
        sqlite_env, "rule", "set", "level", "--min", "0", "--max", "5", "--unit", "m"
    )
    assert code == 0, out
    code, out = invoke(sqlite_env, "tenant", "create", "farm")
    code, out = invoke(
        sqlite_env,
        "rule",
        "set",
        "level",
        "--max",
        "9",
        "--tenant",
        "farm",
        "--device-type",
        "tank",
    )
    assert code == 0, out
    code, out = invoke(sqlite_env, "rule", "list")
    assert code == 0 and "level" in out and "farm" in out and "tank" in out
    code, out = invoke(sqlite_env, "rule", "set", "level", "--min", "5", "--max", "1")
    assert code == 1 and "above --max" in out
    code, out = invoke(sqlite_env, "rule", "set", "level", "--kind", "sum")
    assert code == 1 and "gauge or counter" in out


def test_serve_refuses_a_weak_key_and_users_are_created(sqlite_env: dict[str, str]) -> None:
    code, out = invoke({**sqlite_env, "TELEMETRA_SECRET_KEY": "short"}, "serve")
    assert code == 1 and "secrets.token_urlsafe" in out
    result = runner.invoke(
        app, ["user", "create", "root", "--role", "admin", "--password-stdin"],
        input="a long enough password\n", env=sqlite_env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["user", "create", "root", "--password-stdin"], input="another password\n",
        env=sqlite_env,
    )  # fmt: skip
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(
        app, ["user", "create", "x", "--password-stdin"], input="short\n", env=sqlite_env
    )
    assert result.exit_code == 1 and "at least 8" in result.output
    code, out = invoke(sqlite_env, "user", "list")
    assert code == 0 and "root" in out and "admin" in out and "$argon2" not in out, out
    code, out = invoke(sqlite_env, "user", "list", "--tenant", "nope")
    assert code == 1 and "no tenant named 'nope'" in out


def test_device_token_cert_and_broker_config(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    import getpass
    import zipfile

    from conftest import free_port

    code, out = invoke(sqlite_env, "device", "create", "esp-7")
    first = out.strip().splitlines()[-1]
    code, out = invoke(sqlite_env, "device", "token", "esp-7")
    assert code == 0 and out.strip().splitlines()[-1] != first
    code, out = invoke(sqlite_env, "device", "token", "nope")
    assert code == 1 and "no device" in out
    code, out = invoke(sqlite_env, "device", "cert", "esp-7", "--out", str(tmp_path / "c"))
    assert code == 0, out
    bundle = tmp_path / "c" / "esp-7.zip"
    assert oct(bundle.stat().st_mode & 0o777) == "0o600"
    assert {"esp-7.crt", "esp-7.key", "ca.crt"} <= set(zipfile.ZipFile(bundle).namelist())
    tls_port = free_port()
    code, out = invoke(
        sqlite_env, "broker-config", "--out", str(tmp_path / "broker"),
        "--ingest-password", "ingest-password-1", "--tls-port", str(tls_port),
        "--bind", "127.0.0.1", "--user", getpass.getuser(), "--chirpstack-password", "cs-pw-123",
        "--hostname", "mqtt.example.org", "--hostname", "127.0.0.1",
    )  # fmt: skip
    assert code == 0, out
    assert "written for 1 devices" in out.replace("\n", " ")
    # The ingest hint names the broker as its certificate does (the first --hostname).
    assert f"TELEMETRA_MQTT_URL=mqtts://mqtt.example.org:{tls_port} " in out
    passwd = (tmp_path / "broker" / "passwd").read_text()
    assert "esp-7:$7$" in passwd and "chirpstack:$7$" in passwd
    assert "user chirpstack" in (tmp_path / "broker" / "acl").read_text()


# --- database errors, the application role, the embedded default's location -----------------


async def _pg_admin(sql: str, database: str = "postgres") -> None:
    conn = await asyncpg.connect(f"{PG_SERVER}/{database}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    """An empty PostgreSQL database (not migrated), dropped afterwards: its URL."""
    name = f"telemetra_cli_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except OSError:
        missing("PostgreSQL")
    yield f"{PG_SERVER}/{name}"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _one_line(out: str) -> str:
    """The only line of ``out`` besides the embedded database's location."""
    lines = [x for x in out.strip().splitlines() if not x.startswith("using SQLite database")]
    assert len(lines) == 1, out
    return lines[0]


KEY = "Zq3v-t8WmX1pLr5Yc0NbK7sHdJ2fGa9E"  # 32 characters, not trivial


def test_a_missing_database_is_one_line_that_says_how_to_create_it(fresh_pg: str) -> None:
    name = f"telemetra_none_{uuid.uuid4().hex[:8]}"
    env = {"TELEMETRA_DATABASE_URL": f"{PG_SERVER}/{name}", "TELEMETRA_SECRET_KEY": KEY}
    for command in (["migrate"], ["device", "list"], ["tenant", "list"], ["serve"]):
        code, out = invoke(env, *command)
        line = _one_line(out)
        assert code == 1, (command, out)
        assert f'database "{name}" does not exist' in line, line
        assert f"createdb -h 127.0.0.1 -U postgres {name}" in line, line
    role = f"nobody_{uuid.uuid4().hex[:8]}"
    env["TELEMETRA_DATABASE_URL"] = fresh_pg.replace("postgres@", f"{role}:pw@")
    code, out = invoke(env, "device", "list")
    line = _one_line(out)
    assert code == 1 and f'role "{role}" does not exist' in line and "createuser" in line, line
    assert ":pw@" not in line  # never the password
    env["TELEMETRA_DATABASE_URL"] = f"postgresql://u:secret@127.0.0.1:{free_port()}/x"
    for command in (["migrate"], ["device", "list"], ["serve"]):
        code, out = invoke(env, *command)
        line = _one_line(out)
        assert code == 1 and "cannot reach PostgreSQL at 127.0.0.1" in line, line
        assert "secret" not in line


def test_a_refused_password_names_the_role_not_the_password() -> None:
    from telemetra.store.database import connection_problem

    url = "postgresql://app:hunter2@db.example:6543/telemetra"
    error = asyncpg.InvalidPasswordError('password authentication failed for user "app"')
    line = connection_problem(error, url)
    assert line is not None and "hunter2" not in line
    assert 'refused the password of role "app"' in line
    assert "postgresql://app@db.example:6543/telemetra" in line
    assert connection_problem(ValueError("no such tenant"), url) is None


def test_migrate_creates_the_application_role_that_rls_applies_to(fresh_pg: str) -> None:
    role = f"telemetra_app_{uuid.uuid4().hex[:8]}"
    env = {"TELEMETRA_DATABASE_URL": fresh_pg}
    as_app = fresh_pg.replace("postgres@", f"{role}:app-password-1@")
    try:
        code, out = invoke(env, "migrate", "--app-role", role, "--app-password", "app-password-1")
        assert code == 0, out
        assert f"role {role} created" in out and f"postgresql://{role}@" in out, out

        async def check() -> None:
            conn = await asyncpg.connect(as_app)  # trust: the password is not checked here
            try:
                row = await conn.fetchrow(
                    "SELECT rolsuper, rolbypassrls, rolcanlogin FROM pg_roles "
                    "WHERE rolname = current_user"
                )
                assert tuple(row) == (False, False, True)
                assert await conn.fetchval("SELECT count(*) FROM tenants") == 0  # fails closed
                await conn.execute("SELECT set_config('telemetra.tenant_id', '*', false)")
                assert await conn.fetchval("SELECT count(*) FROM tenants") == 1  # default
                await conn.execute("INSERT INTO tenants (name, created_at) VALUES ('t2', 0)")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute("UPDATE alembic_version SET version_num = 'x'")
                # A table a later migration (same owner) creates is covered too.
                await _pg_admin(
                    "CREATE TABLE later (id bigserial PRIMARY KEY)", fresh_pg.rsplit("/", 1)[1]
                )
                await conn.execute("INSERT INTO later DEFAULT VALUES")
            finally:
                await conn.close()

        asyncio.run(check())
        code, out = invoke(env, "migrate", "--app-role", role)  # again: idempotent
        assert code == 0 and f"role {role} exists" in out, out
        code, out = invoke({"TELEMETRA_DATABASE_URL": as_app}, "tenant", "list")
        assert code == 0 and "t2" in out, out  # the CLI works platform-wide as that role
        code, out = invoke(env, "migrate", "--app-role", "postgres")
        assert code == 1 and "bypasses Row-Level Security" in _one_line(out)
        code, out = invoke(env, "migrate", "--app-role", "Bad-Name")
        assert code == 1 and "role name" in _one_line(out)
    finally:
        asyncio.run(_pg_admin(f"DROP OWNED BY {role} CASCADE", fresh_pg.rsplit("/", 1)[1]))
        asyncio.run(_pg_admin(f"DROP ROLE IF EXISTS {role}"))


def test_the_production_roles_migrate_and_work_under_rls(tmp_path: Path) -> None:
    """As the walkthrough does it: an ordinary owner (forced RLS applies to it too) migrates
    from nothing and again at head, with --app-role; the CLI works as either role."""
    from telemetra.ingest.timestamps import format_us

    tag = uuid.uuid4().hex[:8]
    owner, role, name = f"owner_{tag}", f"app_{tag}", f"telemetra_walk_{tag}"
    try:
        asyncio.run(_pg_admin(f"CREATE ROLE {owner} LOGIN"))
    except OSError:
        missing("PostgreSQL")
    try:
        asyncio.run(_pg_admin(f"CREATE ROLE {role} LOGIN"))  # createuser's defaults
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}" OWNER {owner}'))
        as_owner = {
            "TELEMETRA_DATABASE_URL": PG_SERVER.replace("postgres@", f"{owner}@") + f"/{name}"
        }
        as_app = {"TELEMETRA_DATABASE_URL": PG_SERVER.replace("postgres@", f"{role}@") + f"/{name}"}
        for _ in range(2):  # from nothing, then at head
            code, out = invoke(as_owner, "migrate", "--app-role", role)
            assert code == 0 and f"role {role} exists" in out, out
        code, out = invoke(as_owner, "tenant", "create", "acme")
        assert code == 0, out
        code, out = invoke(as_owner, "device", "create", "walk-1", "--tenant", "acme")
        assert code == 0, out
        code, out = invoke(as_app, "device", "list", "--json")
        assert code == 0 and '"uid": "walk-1"' in out, out
        source = tmp_path / "walk.csv"
        source.write_text(f"device,ts,metric,value\nwalk-1,{format_us(now_us())},temperature,20\n")
        code, out = invoke(as_app, "import", str(source))
        assert code == 0, out
        code, out = invoke(as_app, "latest", "--json")
        assert code == 0 and '"walk-1"' in out, out
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(_pg_admin(f"DROP ROLE IF EXISTS {role}"))
        asyncio.run(_pg_admin(f"DROP ROLE IF EXISTS {owner}"))


def test_a_trivial_secret_key_is_refused_in_one_line(sqlite_env: dict[str, str]) -> None:
    from pydantic import ValidationError

    from telemetra.config import Settings

    for trivial in ("changeme" * 4, "k" * 48, "abcdefghijk" * 3):
        with pytest.raises(ValidationError, match="trivial"):
            Settings(secret_key=trivial)
        code, out = invoke({**sqlite_env, "TELEMETRA_SECRET_KEY": trivial}, "serve")
        line = _one_line(out)
        assert code == 1 and line.startswith("error: invalid configuration: TELEMETRA_SECRET_KEY")
        assert "secrets.token_urlsafe" in line
    Settings(secret_key=KEY)
    code, out = invoke({**sqlite_env, "TELEMETRA_SECRET_KEY": ""}, "serve")  # missing
    line = _one_line(out)
    assert code == 1 and "secrets.token_urlsafe" in line and "demo" not in line, line


def test_the_embedded_default_says_where_it_is_on_stderr(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    where = (tmp_path / "data" / "telemetra.db").resolve()
    for command in (["device", "list", "--json"], ["tenant", "list"], ["migrate"]):
        result = runner.invoke(app, command, env=sqlite_env)
        assert result.exit_code == 0, result.output
        assert f"using SQLite database {where} (TELEMETRA_DATA_DIR to change)" in result.stderr
        assert result.stderr.count("using SQLite") == 1
        assert "using SQLite" not in result.stdout
    result = runner.invoke(app, ["device", "list", "--json"], env=sqlite_env)
    assert result.stdout == ""  # no devices: nothing but JSON lines on stdout
    env = {**sqlite_env, "TELEMETRA_DATABASE_URL": f"sqlite:///{tmp_path / 'other.db'}"}
    result = runner.invoke(app, ["tenant", "list"], env=env)
    assert result.exit_code == 0 and "using SQLite" not in result.output  # configured: no note


def _commands(group: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Every command under ``group`` (a typer group): its path and the command."""
    yield path, group
    context = typer.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if hasattr(command, "list_commands"):
            yield from _commands(command, (*path, name))
        elif command is not None:
            yield (*path, name), command


def test_help_shows_flags_as_flags_and_whole_environment_variable_names() -> None:
    import typer.main

    checked = 0
    for path, command in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        text = result.output
        assert "<bool>" not in text, (path, text)
        for param in command.params:
            envvar = getattr(param, "envvar", None)
            if param.param_type_name == "option" and envvar and param.show_envvar:
                assert str(envvar) in text, (path, envvar, text)
        checked += 1
    assert checked > 15


# --- looking at stored data: readings and latest ---------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def data_env(request: pytest.FixtureRequest, sqlite_env: dict[str, str]) -> dict[str, str]:
    """The CLI on a fresh database of each kind."""
    if request.param == "sqlite":
        return sqlite_env
    url = request.getfixturevalue("fresh_pg")
    code, out = invoke({"TELEMETRA_DATABASE_URL": url}, "migrate")
    assert code == 0, out
    return {"TELEMETRA_DATABASE_URL": url, "TELEMETRA_DATA_DIR": sqlite_env["TELEMETRA_DATA_DIR"]}


def test_readings_and_latest_show_stored_data_without_serve(
    data_env: dict[str, str], tmp_path: Path
) -> None:
    import csv
    import json
    import time

    from telemetra.ingest.timestamps import format_us
    from telemetra.store.export import COLUMNS

    now = time.time_ns() // 1000 // 1_000_000 * 1_000_000
    minutes = [format_us(now - m * 60_000_000) for m in (30, 20, 10)]
    code, out = invoke(data_env, "device", "create", "look-1")
    assert code == 0, out
    code, out = invoke(data_env, "device", "create", "look-2")
    source = tmp_path / "in.csv"
    source.write_text(
        "device,ts,metric,value\n"
        f"look-1,{minutes[0]},temperature,21.5\n"
        f"look-1,{minutes[1]},temperature,22.25\n"
        f"look-1,{minutes[2]},humidity,40\n"
        f"look-1,{minutes[2]},state,open\n"
        f"look-2,{minutes[2]},temperature,5\n"
    )
    code, out = invoke(data_env, "import", str(source))
    assert code == 0, out

    code, out = invoke(data_env, "readings", "look-1", "--from", "-1h")
    assert code == 0, out
    assert "22.25" in out and "humidity" in out and "open" in out and "°C" in out, out

    result = runner.invoke(app, ["readings", "look-1", "--json"], env=data_env)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(x["metric"], x["value"]) for x in lines] == [
        ("temperature", 21.5), ("temperature", 22.25), ("humidity", 40.0), ("state", "open"),
    ]  # fmt: skip
    assert lines[0]["ts"] == minutes[0] and lines[0]["unit"] == "°C"
    assert lines[0]["flags"] == ["late"] and lines[0]["device"] == "look-1"  # 30 min old

    result = runner.invoke(app, ["readings", "look-1", "--csv"], env=data_env)
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(result.stdout.splitlines()))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 5
    exported = tmp_path / "out.csv"
    exported.write_text(result.stdout)
    code, out = invoke(data_env, "import", str(exported))  # reads back: all already stored
    assert code == 0 and "already stored" in out, out
    assert next(x for x in out.splitlines() if "already stored" in x).split()[-2] == "4", out

    result = runner.invoke(
        app, ["readings", "look-1", "--metric", "humidity", "--json"], env=data_env
    )
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 1
    assert '"humidity"' in result.stdout
    result = runner.invoke(app, ["readings", "look-1", "--limit", "2", "--json"], env=data_env)
    assert len(result.stdout.splitlines()) == 2 and "only the first 2" in result.stderr
    result = runner.invoke(app, ["readings", "look-1", "--from", "-5m"], env=data_env)
    assert result.exit_code == 0 and "no readings of look-1" in result.stderr
    code, out = invoke(data_env, "readings", "look-1", "--from", "yesterday")
    assert code == 1 and "--from" in _one_line(out) and "-24h" in out
    code, out = invoke(data_env, "readings", "nope")
    assert code == 1 and "no device 'nope'" in _one_line(out)

    result = runner.invoke(app, ["latest", "--json"], env=data_env)
    assert result.exit_code == 0, result.output
    latest = {
        (x["device"], x["metric"]): x["value"] for x in map(json.loads, result.stdout.splitlines())
    }
    assert latest == {
        ("look-1", "temperature"): 22.25, ("look-1", "humidity"): 40.0,
        ("look-1", "state"): "open", ("look-2", "temperature"): 5.0,
    }  # fmt: skip
    code, out = invoke(data_env, "latest", "look-2")
    assert code == 0 and "look-2" in out and "look-1" not in out.replace("look-2", ""), out
    code, out = invoke(data_env, "latest", "look-1", "--metric", "state", "--json")
    assert code == 0 and '"open"' in out and "temperature" not in out
    code, out = invoke(data_env, "latest", "nope")
    assert code == 1 and "no device 'nope'" in _one_line(out)
