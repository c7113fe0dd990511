"""The command line: help, administration, errors as one line, schema policy."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from telemetra.cli import app

from conftest import PG_SERVER, missing

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
    code, out = invoke(
        sqlite_env, "broker-config", "--out", str(tmp_path / "broker"),
        "--ingest-password", "ingest-password-1", "--tls-port", str(free_port()),
        "--bind", "127.0.0.1", "--user", getpass.getuser(), "--chirpstack-password", "cs-pw-123",
    )  # fmt: skip
    assert code == 0, out
    assert "written for 1 devices" in out.replace("\n", " ")
    passwd = (tmp_path / "broker" / "passwd").read_text()
    assert "esp-7:$7$" in passwd and "chirpstack:$7$" in passwd
    assert "user chirpstack" in (tmp_path / "broker" / "acl").read_text()
