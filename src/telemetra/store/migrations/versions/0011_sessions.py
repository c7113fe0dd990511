"""Dashboard sign-in sessions (``POST /api/v1/auth/session``).

- ``sessions``: one row per signed-in browser. Only a SHA-256 hash of the cookie's token is
  stored; ``csrf_token`` is the value mutations must echo in ``X-CSRF-Token`` (worthless without
  the cookie). ``password_tag`` ends the session when the password changes, as for bearer tokens.
  A session is valid while ``revoked_at`` is NULL and ``expires_at`` is in the future.

The table carries ``tenant_id`` with the fail-closed Row-Level Security policy of 0008; sessions
are looked up platform-wide (before the tenant is known), like users at login.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
SETTING = "current_setting('telemetra.tenant_id', true)"
ALL = f"{SETTING} = '*'"  # as 0008: unset or '' sees and writes nothing
MINE = f"tenant_id = nullif(nullif({SETTING}, ''), '*')::bigint"


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", Id, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", Id, sa.ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("password_tag", sa.String(32), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("uq_sessions_token_hash", "sessions", ["token_hash"], unique=True)
    op.create_index("ix_sessions_user", "sessions", ["user_id", "expires_at"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE sessions ENABLE ROW LEVEL SECURITY")
        op.execute("ALTER TABLE sessions FORCE ROW LEVEL SECURITY")
        op.execute(
            "CREATE POLICY tenant_isolation ON sessions "
            f"USING ({ALL} OR {MINE}) WITH CHECK ({ALL} OR {MINE})"
        )


def downgrade() -> None:
    op.drop_table("sessions")
