"""References scoped by tenant: a device's latest values and quality record belong to its tenant.

A foreign key on ``device_id`` alone could pair one tenant's ``tenant_id`` with another
tenant's device, and Row-Level Security, which trusts ``tenant_id``, would then show that
device's data to the wrong tenant. The composite key ``(tenant_id, device_id)`` →
``devices (tenant_id, id)`` makes such a row impossible. ``readings`` and the rollups carry
no foreign key: one index probe per stored value on the ingest path; the writer copies
``tenant_id`` from the same device row it takes ``device_id`` from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TABLES = ("latest", "device_quality")


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.create_unique_constraint("uq_devices_tenant_id", ["tenant_id", "id"])
    for table in TABLES:
        # Rows of devices deleted outside `delete_device` would block the new key.
        op.execute(f"DELETE FROM {table} WHERE device_id NOT IN (SELECT id FROM devices)")
        with op.batch_alter_table(table) as batch:
            batch.create_foreign_key(
                f"fk_{table}_device",
                "devices",
                ["tenant_id", "device_id"],
                ["tenant_id", "id"],
                ondelete="CASCADE",
            )


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"fk_{table}_device", type_="foreignkey")
    with op.batch_alter_table("devices") as batch:
        batch.drop_constraint("uq_devices_tenant_id", type_="unique")
