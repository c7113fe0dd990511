"""Idempotent dead letters and dead-letter replay.

``fingerprint`` names a rejection by what it is — tenant, device, source, topic, a hash of
the whole raw payload, entry index, metric and reason, not when it arrived — and is unique,
so a redelivered message or a file imported twice is dead-lettered once. Rows from before
this revision have no fingerprint (NULLs never collide). ``metric`` is the value a rejection
names. ``replayed_at``/``replay_outcome``/``replay_detail`` record the last replay of a dead
letter through today's devices and cleaning rules (it is kept, not deleted).

No new table: ``dead_letters`` keeps the Row-Level Security policy of 0003/0006.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ("fingerprint", "metric", "replayed_at", "replay_outcome", "replay_detail")


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("fingerprint", sa.String(32)))
    op.add_column("dead_letters", sa.Column("metric", sa.String(200)))
    op.add_column("dead_letters", sa.Column("replayed_at", sa.BigInteger))
    # stored | rejected | skipped
    op.add_column("dead_letters", sa.Column("replay_outcome", sa.String(16)))
    op.add_column("dead_letters", sa.Column("replay_detail", sa.Text))
    op.create_index("uq_dead_letters_fingerprint", "dead_letters", ["fingerprint"], unique=True)
    # Replay selects by device and receive time.
    op.create_index("ix_dead_letters_device", "dead_letters", ["device_uid", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_dead_letters_device", "dead_letters")
    op.drop_index("uq_dead_letters_fingerprint", "dead_letters")
    with op.batch_alter_table("dead_letters") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
