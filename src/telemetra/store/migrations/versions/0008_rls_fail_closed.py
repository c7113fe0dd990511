"""Row-Level Security fails closed (PostgreSQL).

Until now a session without ``telemetra.tenant_id`` (unset or empty) saw and wrote every
tenant's rows, so a request that forgot to say whose it was saw everything. Now only ``*``
means every tenant, and it is said explicitly: platform-wide processes (ingest workers, the
CLI, migrations) start their connections with it, ``serve`` per request where the work is
platform-wide (see ``store.tenancy``). Unset or empty: no rows, and writes are refused.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SETTING = "current_setting('telemetra.tenant_id', true)"
# NULL (unset) and '' make every comparison below NULL: the row is neither seen nor written.
ALL = f"{SETTING} = '*'"
TENANT = f"nullif(nullif({SETTING}, ''), '*')::bigint"  # '*' and '' never reach the cast
TABLES = {  # table -> its tenant column
    "tenants": "id",
    "devices": "tenant_id",
    "users": "tenant_id",
    "readings": "tenant_id",
    "rollup_1m": "tenant_id",
    "rollup_1h": "tenant_id",
    "latest": "tenant_id",
    "dead_letters": "tenant_id",
    "device_quality": "tenant_id",
    "metric_rules": "tenant_id",
    "device_certificates": "tenant_id",
}


def _policies(everything: str) -> None:
    for table, column in TABLES.items():
        mine = f"{column} = {TENANT}"
        # Global cleaning rules (no tenant) are readable by every tenant.
        readable = f"{mine} OR {column} IS NULL" if table == "metric_rules" else mine
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({everything} OR {readable}) WITH CHECK ({everything} OR {mine})"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policies(ALL)
        # Later migrations in this run see every tenant (store.database.migrate set '' before:
        # what the policies up to 0007 read as every tenant).
        op.execute("SELECT set_config('telemetra.tenant_id', '*', true)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policies(f"coalesce({SETTING}, '') IN ('', '*')")  # 0006: unset meant every tenant
