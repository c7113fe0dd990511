"""The alert engine's feed of committed readings, and device connectivity.

- ``alert_feed``: one row per committed batch and tenant that holds readings (or quality
  samples) some enabled alert rule watches, written in the batch's own transaction, so that
  whatever is stored is evaluated, whichever ingest process stored it. The worker evaluates
  rows in id order and deletes them in the transaction that saves the outcome.
- ``devices.online`` / ``devices.online_changed_at``: the worker's verdict from last seen and
  the expected interval (NULL: not judged yet).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SETTING = "current_setting('telemetra.tenant_id', true)"
ALL = f"{SETTING} = '*'"  # as 0008: unset or '' sees and writes nothing
MINE = f"tenant_id = nullif(nullif({SETTING}, ''), '*')::bigint"


def upgrade() -> None:
    op.create_table(
        "alert_feed",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("size", sa.Integer, nullable=False),  # readings and samples in body
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("online", sa.Boolean))
        batch.add_column(sa.Column("online_changed_at", sa.BigInteger))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE alert_feed ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE alert_feed FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON alert_feed "
            f"USING ({ALL} OR {MINE}) WITH CHECK ({ALL} OR {MINE})"
        )


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("online_changed_at")
        batch.drop_column("online")
    op.drop_table("alert_feed")
