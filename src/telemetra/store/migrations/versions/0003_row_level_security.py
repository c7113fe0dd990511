"""Row-Level Security on tenant-owned tables (PostgreSQL): enabled and forced.

A session sees the rows of the tenant in ``telemetra.tenant_id`` (set per connection from the
request's caller, see ``store.tenancy``), all rows for ``*`` (platform admin) or when unscoped
(ingest, CLI, migrations). FORCE makes the policies apply to the table owner too.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SETTING = "current_setting('telemetra.tenant_id', true)"
UNSCOPED = f"coalesce({SETTING}, '') IN ('', '*')"
TABLES = {  # table -> its tenant column expression
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
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, column in TABLES.items():
        mine = f"{column} = nullif({SETTING}, '')::bigint"
        # Global cleaning rules (no tenant) are readable by every tenant.
        readable = f"{mine} OR {column} IS NULL" if table == "metric_rules" else mine
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({UNSCOPED} OR {readable}) WITH CHECK ({UNSCOPED} OR {mine})"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
