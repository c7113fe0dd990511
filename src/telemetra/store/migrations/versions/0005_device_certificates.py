"""Device certificates issued, for the broker's certificate revocation list.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# As in 0003: a session sees its tenant's rows, all rows when unscoped or a platform admin.
SETTING = "current_setting('telemetra.tenant_id', true)"
POLICY = f"coalesce({SETTING}, '') IN ('', '*') OR tenant_id = nullif({SETTING}, '')::bigint"


def upgrade() -> None:
    op.create_table(
        "device_certificates",
        sa.Column("serial", sa.String(40), primary_key=True),
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("device_uid", sa.String(128), nullable=False),
        sa.Column("issued_at", sa.BigInteger, nullable=False),
        sa.Column("not_after", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_device_certificates_uid", "device_certificates", ["device_uid"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE device_certificates ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE device_certificates FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON device_certificates "
            f"USING ({POLICY}) WITH CHECK ({POLICY})"
        )


def downgrade() -> None:
    op.drop_table("device_certificates")
