"""Initial schema: tenants, devices, metrics, readings, rollups, latest, dead letters, quality.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import time

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("device_id", Id, primary_key=True),
        sa.Column("metric_id", Id, primary_key=True),
        sa.Column("bucket", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("sum", sa.Float, nullable=False),
        sa.Column("min", sa.Float, nullable=False),
        sa.Column("max", sa.Float, nullable=False),
        sa.Column("first_ts", sa.BigInteger, nullable=False),
        sa.Column("first_value", sa.Float, nullable=False),
        sa.Column("last_ts", sa.BigInteger, nullable=False),
        sa.Column("last_value", sa.Float, nullable=False),
    )


def upgrade() -> None:
    tenants = op.create_table(
        "tenants",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("timezone", sa.String(64)),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "devices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("uid", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.String(200)),
        sa.Column("type", sa.String(64)),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("timezone", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("last_seen", sa.BigInteger),
        sa.Column("token_hash", sa.String(128)),
        sa.Column("clock_offset_us", sa.BigInteger),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_devices_tenant", "devices", ["tenant_id", "uid"])
    op.create_table(
        "metrics",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("unit", sa.String(32)),
        sa.Column("kind", sa.String(16), nullable=False),
    )
    op.create_table(
        "metric_rules",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id", ondelete="CASCADE")),
        sa.Column("metric", sa.String(200), nullable=False),
        sa.Column("device_type", sa.String(64)),
        sa.Column("min_value", sa.Float),
        sa.Column("max_value", sa.Float),
        sa.Column("unit", sa.String(32)),
        sa.Column("kind", sa.String(16)),
        sa.UniqueConstraint("tenant_id", "metric", "device_type", name="uq_metric_rules_scope"),
    )
    op.create_table(
        "readings",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("device_id", Id, primary_key=True),
        sa.Column("metric_id", Id, primary_key=True),
        sa.Column("ts", sa.BigInteger, primary_key=True),
        sa.Column("value", sa.Float),
        sa.Column("text", sa.Text),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
        sa.Column("ts_device", sa.BigInteger),
    )
    _rollup("rollup_1m")
    _rollup("rollup_1h")
    op.create_table(
        "latest",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("device_id", Id, primary_key=True),
        sa.Column("metric_id", Id, primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("value", sa.Float),
        sa.Column("text", sa.Text),
        sa.Column("received_at", sa.BigInteger, nullable=False),
        sa.Column("flags", sa.Integer, nullable=False),
    )
    op.create_index("ix_latest_tenant", "latest", ["tenant_id"])
    op.create_table(
        "event_times",
        sa.Column("device_id", Id, primary_key=True),
        sa.Column("event_id", sa.String(200), primary_key=True),
        sa.Column("ts", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "dead_letters",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", Id),
        sa.Column("device_uid", sa.String(128)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("topic", sa.String(512)),
        sa.Column("reason", sa.String(40), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("entry_index", sa.Integer),
        sa.Column("payload", sa.LargeBinary),
        sa.Column("payload_size", sa.Integer, nullable=False),
        sa.Column("received_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dead_letters_tenant_id", "dead_letters", ["tenant_id", "id"])
    op.create_table(
        "device_quality",
        sa.Column("tenant_id", Id, nullable=False),
        sa.Column("device_id", Id, primary_key=True),
        sa.Column("counter", sa.String(48), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        tenants, [{"name": "default", "timezone": None, "created_at": time.time_ns() // 1000}]
    )


def downgrade() -> None:
    for name in (
        "device_quality",
        "dead_letters",
        "event_times",
        "latest",
        "rollup_1h",
        "rollup_1m",
        "readings",
        "metric_rules",
        "metrics",
        "devices",
        "tenants",
    ):
        op.drop_table(name)
