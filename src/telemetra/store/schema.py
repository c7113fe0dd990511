"""The database schema (SQLAlchemy Core). Alembic migrations in ``migrations/`` create it.

Times are BIGINT microseconds since the epoch (UTC); see ``telemetra.model``. Every
tenant-owned table carries ``tenant_id``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")

DEFAULT_TENANT = "default"

tenants = Table(
    "tenants",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("timezone", String(64)),
    Column("created_at", BigInteger, nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    # Globally unique: MQTT topics and broker usernames name a device by uid alone.
    Column("uid", String(128), nullable=False, unique=True),
    Column("name", String(200)),
    Column("type", String(64)),
    Column("metadata", JSON, nullable=False, default=dict),  # location, firmware, tags
    Column("timezone", String(64)),
    Column("status", String(16), nullable=False, default="active"),
    Column("last_seen", BigInteger),
    Column("token_hash", String(128)),
    Column("broker_hash", String(256)),  # Mosquitto password-file form of the same token
    Column("clock_offset_us", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    # The worker's verdict from last seen and the expected interval (NULL: not judged yet).
    Column("online", Boolean),
    Column("online_changed_at", BigInteger),
    # The target of tenant-scoped references (migration 0004).
    UniqueConstraint("tenant_id", "id", name="uq_devices_tenant_id"),
)
Index("ix_devices_tenant", devices.c.tenant_id, devices.c.uid)
Index("ix_devices_token_hash", devices.c.token_hash, unique=True)

metrics = Table(
    "metrics",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("unit", String(32)),
    Column("kind", String(16), nullable=False, default="gauge"),  # gauge | counter | text
)

# Cleaning rules as data: per metric, optionally per device type and tenant. Built-in
# defaults live in ``telemetra.ingest.clean``; rows here override them.
metric_rules = Table(
    "metric_rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE")),
    Column("metric", String(200), nullable=False),
    Column("device_type", String(64)),
    Column("min_value", Float),
    Column("max_value", Float),
    Column("unit", String(32)),
    Column("kind", String(16)),
    UniqueConstraint("tenant_id", "metric", "device_type", name="uq_metric_rules_scope"),
)

readings = Table(
    "readings",
    metadata,
    Column("tenant_id", Id, nullable=False),
    Column("device_id", Id, primary_key=True),
    Column("metric_id", Id, primary_key=True),
    Column("ts", BigInteger, primary_key=True),
    Column("value", Float),
    Column("text", Text),
    Column("received_at", BigInteger, nullable=False),
    Column("flags", Integer, nullable=False, default=0),
    Column("ts_device", BigInteger),  # the device's own time, when a clock correction moved it
)


def _rollup(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("tenant_id", Id, nullable=False),
        Column("device_id", Id, primary_key=True),
        Column("metric_id", Id, primary_key=True),
        Column("bucket", BigInteger, primary_key=True),
        Column("count", BigInteger, nullable=False),
        Column("sum", Float, nullable=False),
        Column("min", Float, nullable=False),
        Column("max", Float, nullable=False),
        Column("first_ts", BigInteger, nullable=False),
        Column("first_value", Float, nullable=False),
        Column("last_ts", BigInteger, nullable=False),
        Column("last_value", Float, nullable=False),
    )


rollup_1m = _rollup("rollup_1m")
rollup_1h = _rollup("rollup_1h")
ROLLUPS = {60 * 1_000_000: rollup_1m, 3600 * 1_000_000: rollup_1h}


def _device_ref(table: str) -> ForeignKeyConstraint:
    """(tenant_id, device_id) → the device *of that tenant* (see migration 0004)."""
    return ForeignKeyConstraint(
        ["tenant_id", "device_id"],
        ["devices.tenant_id", "devices.id"],
        name=f"fk_{table}_device",
        ondelete="CASCADE",
    )


# Newest value by event time per series: a primary-key lookup instead of DISTINCT ON.
latest = Table(
    "latest",
    metadata,
    Column("tenant_id", Id, nullable=False),
    Column("device_id", Id, primary_key=True),
    Column("metric_id", Id, primary_key=True),
    Column("ts", BigInteger, nullable=False),
    Column("value", Float),
    Column("text", Text),
    Column("received_at", BigInteger, nullable=False),
    Column("flags", Integer, nullable=False),
    _device_ref("latest"),
)
Index("ix_latest_tenant", latest.c.tenant_id)

# Server-assigned times of messages that carried no device timestamp, so that a redelivery
# maps onto the same idempotency key.
event_times = Table(
    "event_times",
    metadata,
    Column("device_id", Id, primary_key=True),
    Column("event_id", String(200), primary_key=True),
    Column("ts", BigInteger, nullable=False),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id),
    Column("device_uid", String(128)),
    Column("source", String(16), nullable=False),  # mqtt | http | import
    Column("topic", String(512)),
    Column("reason", String(40), nullable=False),
    Column("detail", Text, nullable=False),
    Column("entry_index", Integer),
    Column("payload", LargeBinary),
    Column("payload_size", Integer, nullable=False),
    Column("received_at", BigInteger, nullable=False),
    # What the rejection is, not when it arrived: a redelivery or a second import of the same
    # input has the same fingerprint and is dead-lettered once (``write.dead_letter_row``).
    Column("fingerprint", String(32)),  # NULL on rows from before migration 0007
    Column("metric", String(200)),
    # The last replay through today's devices and rules (``ingest.replay``).
    Column("replayed_at", BigInteger),
    Column("replay_outcome", String(16)),  # stored | rejected | skipped
    Column("replay_detail", Text),
)
Index("ix_dead_letters_tenant_id", dead_letters.c.tenant_id, dead_letters.c.id)
Index("uq_dead_letters_fingerprint", dead_letters.c.fingerprint, unique=True)
Index("ix_dead_letters_device", dead_letters.c.device_uid, dead_letters.c.received_at)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("username", String(200), nullable=False, unique=True),
    Column("password_hash", String(256), nullable=False),  # argon2
    Column("role", String(16), nullable=False),  # admin | owner | operator | viewer
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", BigInteger, nullable=False),
)
Index("ix_users_tenant", users.c.tenant_id)

# Running per-device counters: accepted, duplicate, conflict, late, out_of_order,
# rejected:<reason>, ... (one row per device and counter).
device_quality = Table(
    "device_quality",
    metadata,
    Column("tenant_id", Id, nullable=False),
    Column("device_id", Id, primary_key=True),
    Column("counter", String(48), primary_key=True),
    Column("count", BigInteger, nullable=False),
    _device_ref("device_quality"),
)

# Client certificates issued to devices, kept after the device is deleted: the broker's
# certificate revocation list names those revoked (device deleted) and those of disabled
# devices, until they expire. Serials are hex (X.509 serials are up to 20 bytes).
device_certificates = Table(
    "device_certificates",
    metadata,
    Column("serial", String(40), primary_key=True),
    Column("tenant_id", Id, nullable=False),
    Column("device_uid", String(128), nullable=False),
    Column("issued_at", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)
Index("ix_device_certificates_uid", device_certificates.c.device_uid)

# --- alerts (migration 0009) ------------------------------------------------------------------
# ``metric`` is '' where a series has none (a no-data rule per device): NULLs never collide in
# a unique index, and one open alert per (rule, device, metric) must hold for those too.

alert_rules = Table(
    "alert_rules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(16), nullable=False),  # threshold | rate | no_data | quality | anomaly
    Column("severity", String(16), nullable=False),  # info | warning | critical
    Column("enabled", Boolean, nullable=False),
    # The whole rule as ``alerts.rules.Rule`` reads it, channel secrets included (write-only in
    # the API).
    Column("definition", JSON, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "name", name="uq_alert_rules_name"),
)

# Kept when their rule is deleted (the history stays queryable): no foreign key to the rule,
# whose name is copied (and follows a rename).
alerts = Table(
    "alerts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("rule_id", Id, nullable=False),
    Column("rule_name", String(200), nullable=False),
    Column("device", String(128), nullable=False),
    Column("metric", String(200), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("state", String(16), nullable=False),  # firing | acknowledged | resolved
    Column("flapping", Boolean, nullable=False),
    Column("value", Float),
    Column("message", Text, nullable=False),
    Column("started_at", BigInteger, nullable=False),
    Column("acknowledged_at", BigInteger),
    Column("acknowledged_by", String(200)),
    Column("note", Text),
    Column("resolved_at", BigInteger),
    Column("resolved_by", String(200)),  # "auto" or a username
    Column("updated_at", BigInteger, nullable=False),
    UniqueConstraint("tenant_id", "id", name="uq_alerts_tenant_id"),
)
OPEN_ALERT = alerts.c.state != "resolved"
Index(
    "uq_alerts_open_series", alerts.c.rule_id, alerts.c.device, alerts.c.metric,
    unique=True, sqlite_where=OPEN_ALERT, postgresql_where=OPEN_ALERT,
)  # fmt: skip
Index("ix_alerts_tenant_started", alerts.c.tenant_id, alerts.c.started_at, alerts.c.id)
Index("ix_alerts_tenant_state", alerts.c.tenant_id, alerts.c.state)

# The alert engine's evaluation state per series, so that a restart re-fires and forgets nothing.
alert_series_state = Table(
    "alert_series_state",
    metadata,
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("rule_id", Id, primary_key=True),
    Column("device", String(128), primary_key=True),
    Column("metric", String(200), primary_key=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

# One delivery per channel of an alert change, written in the change's transaction and delivered
# at least once from here. ``target`` is the channel as the rule said when the change happened.
notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, nullable=False),
    Column("alert_id", Id, nullable=False),
    Column("rule_id", Id, nullable=False),
    Column("channel", String(16), nullable=False),  # webhook | email | mqtt | slack
    Column("channel_index", Integer, nullable=False),  # its place in the rule's channels
    Column("target", JSON, nullable=False),
    Column("event", String(16), nullable=False),  # fired | acknowledged | resolved
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text),
    Column("next_attempt_at", BigInteger),  # None once delivered or failed for good
    Column("created_at", BigInteger, nullable=False),
    Column("delivered_at", BigInteger),
    ForeignKeyConstraint(
        ["tenant_id", "alert_id"],
        ["alerts.tenant_id", "alerts.id"],
        name="fk_notification_outbox_alert",
        ondelete="CASCADE",
    ),
)
Index(
    "ix_notification_outbox_due",
    notification_outbox.c.status,
    notification_outbox.c.next_attempt_at,
)
Index("ix_notification_outbox_alert", notification_outbox.c.alert_id)

# Committed readings some enabled alert rule watches: one row per batch and tenant, written in
# the batch's transaction, evaluated and deleted by the worker (migration 0010).
alert_feed = Table(
    "alert_feed",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("body", JSON, nullable=False),
    Column("size", Integer, nullable=False),  # readings and samples in body
    Column("created_at", BigInteger, nullable=False),
)

# Dashboard sign-in sessions (migration 0011): the cookie's token only as a SHA-256 hash.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("token_hash", String(64), nullable=False),
    Column("user_id", Id, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("tenant_id", Id, ForeignKey("tenants.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("password_tag", String(32), nullable=False),  # ends it when the password changes
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger),
)
Index("uq_sessions_token_hash", sessions.c.token_hash, unique=True)
Index("ix_sessions_user", sessions.c.user_id, sessions.c.expires_at)
