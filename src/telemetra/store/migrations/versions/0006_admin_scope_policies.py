"""Row-Level Security policies that a platform admin's scope cannot break (PostgreSQL).

The policies of 0003 and 0005 cast ``telemetra.tenant_id`` to bigint. PostgreSQL folds that
cast while planning, whatever the OR before it says, so with an admin's scope ``*`` every
query with a condition failed ("invalid input syntax for type bigint"). Now ``*`` and the
empty (unscoped) value become NULL before the cast.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SETTING = "current_setting('telemetra.tenant_id', true)"
UNSCOPED = f"coalesce({SETTING}, '') IN ('', '*')"
TENANT = f"nullif(nullif({SETTING}, ''), '*')::bigint"
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


def _policies(tenant: str) -> None:
    for table, column in TABLES.items():
        mine = f"{column} = {tenant}"
        # Global cleaning rules (no tenant) are readable by every tenant.
        readable = f"{mine} OR {column} IS NULL" if table == "metric_rules" else mine
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({UNSCOPED} OR {readable}) WITH CHECK ({UNSCOPED} OR {mine})"
        )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policies(TENANT)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _policies(f"nullif({SETTING}, '')::bigint")
