"""Alert rules, alerts, the alert engine's per-series state and the notification outbox.

- ``alert_rules``: one row per rule, its name unique in its tenant; ``definition`` holds the
  whole rule (``alerts.rules.Rule``), ``kind``/``severity``/``enabled`` are copied out for lists.
- ``alerts``: the full history. At most one open (not resolved) alert per (rule, device, metric):
  a partial unique index. Kept when their rule is deleted (no foreign key to it).
- ``alert_series_state``: what the engine must remember per series across restarts.
- ``notification_outbox``: one delivery per channel of an alert change, written in the same
  transaction as the change.

Every table carries ``tenant_id`` with the fail-closed Row-Level Security policy of 0008.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SETTING = "current_setting('telemetra.tenant_id', true)"
ALL = f"{SETTING} = '*'"  # as 0008: unset or '' sees and writes nothing
MINE = f"tenant_id = nullif(nullif({SETTING}, ''), '*')::bigint"
TABLES = ("alert_rules", "alerts", "alert_series_state", "notification_outbox")


def _tenant() -> sa.Column[int]:
    return sa.Column(
        "tenant_id", Id, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "alert_rules",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        _tenant(),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_alert_rules_name"),
    )
    op.create_table(
        "alerts",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        _tenant(),
        sa.Column("rule_id", Id, nullable=False),
        sa.Column("rule_name", sa.String(200), nullable=False),
        sa.Column("device", sa.String(128), nullable=False),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("flapping", sa.Boolean, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("acknowledged_at", sa.BigInteger),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("note", sa.Text),
        sa.Column("resolved_at", sa.BigInteger),
        sa.Column("resolved_by", sa.String(200)),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("tenant_id", "id", name="uq_alerts_tenant_id"),
    )
    open_alert = sa.text("state <> 'resolved'")
    op.create_index(
        "uq_alerts_open_series", "alerts", ["rule_id", "device", "metric"], unique=True,
        sqlite_where=open_alert, postgresql_where=open_alert,
    )  # fmt: skip
    op.create_index("ix_alerts_tenant_started", "alerts", ["tenant_id", "started_at", "id"])
    op.create_index("ix_alerts_tenant_state", "alerts", ["tenant_id", "state"])
    op.create_table(
        "alert_series_state",
        _tenant(),
        sa.Column("rule_id", Id, primary_key=True),
        sa.Column("device", sa.String(128), primary_key=True),
        sa.Column("metric", sa.String(200), primary_key=True),
        sa.Column("state", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "notification_outbox",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("alert_id", Id, nullable=False),
        sa.Column("rule_id", Id, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("channel_index", sa.Integer, nullable=False),
        sa.Column("target", sa.JSON, nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("delivered_at", sa.BigInteger),
        sa.ForeignKeyConstraint(
            ["tenant_id", "alert_id"],
            ["alerts.tenant_id", "alerts.id"],
            name="fk_notification_outbox_alert",
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_notification_outbox_due", "notification_outbox", ["status", "next_attempt_at"]
    )
    op.create_index("ix_notification_outbox_alert", "notification_outbox", ["alert_id"])
    if op.get_bind().dialect.name == "postgresql":
        for table in TABLES:
            op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            op.execute(
                f"CREATE POLICY tenant_isolation ON {table} "
                f"USING ({ALL} OR {MINE}) WITH CHECK ({ALL} OR {MINE})"
            )


def downgrade() -> None:
    for table in reversed(TABLES):
        op.drop_table(table)
