"""One typed settings object: ``TELEMETRA_*`` environment variables, optionally a ``.env`` file."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Defaults serve the embedded demo; production sets at least the database URL."""

    model_config = SettingsConfigDict(env_prefix="TELEMETRA_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("telemetra-data"), description="where the embedded defaults live")
    database_url: str | None = Field(
        None, description="postgresql://… or sqlite:///…; default: SQLite file in the data dir"
    )
    mqtt_url: str = "mqtt://127.0.0.1:1883"
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_ca_file: Path | None = Field(None, description="CA certificate for mqtts://")
    mqtt_cert_file: Path | None = Field(None, description="client certificate (mTLS)")
    mqtt_key_file: Path | None = Field(None, description="client key (mTLS)")
    mqtt_client_id: str = Field("telemetra-ingest-1", description="stable per ingest worker")
    mqtt_share_group: str | None = Field(
        None, description="MQTT 5 shared subscription group, e.g. 'telemetra'"
    )
    mqtt_receive_maximum: int = Field(
        20000, ge=1, le=65535, description="in-flight QoS1 window the broker may send us"
    )
    mqtt_ack_qos: int = Field(
        0, ge=0, le=1, description="QoS of ack-topic messages (a lost ack only causes a resend)"
    )
    routes: str | None = Field(
        None, description='topic routes as JSON: [{"pattern", "format", "ack"}, ...]'
    )
    ca_dir: Path | None = Field(
        None, description="installation CA (ca.pem, ca.key 0600); default: <data dir>/ca"
    )
    broker_dir: Path | None = Field(
        None,
        description="folder written by `telemetra broker-config`: device changes rewrite its "
        "passwd and acl and reload Mosquitto",
    )
    default_timezone: str = "UTC"
    auto_register: bool = False
    secret_key: str | None = Field(
        None,
        description="signs user tokens; at least 32 characters outside demo mode, not a "
        "repeated pattern, at least 8 different characters",
    )
    token_ttl_s: int = Field(3600, ge=60, description="lifetime of user access tokens")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=1, le=65535)
    max_request_bytes: int = Field(
        1024 * 1024, ge=1024, description="HTTP request body limit, every route (413 beyond)"
    )
    rate_limit_device_per_s: float = Field(
        20.0, ge=0, description="HTTP ingest requests per device token and second (0: off)"
    )
    rate_limit_user_per_s: float = Field(
        20.0, ge=0, description="API requests per user and second (0: off)"
    )
    rate_limit_burst: float = Field(60.0, ge=1, description="requests allowed in a burst")
    login_failures_per_min: float = Field(
        10.0, ge=0, description="failed logins per username, after a burst of 10 (0: off)"
    )
    login_failures_per_address_per_min: float = Field(
        100.0, ge=0, description="failed logins per client address, after a burst of 100 (0: off)"
    )
    trusted_proxies: str = Field(
        "127.0.0.1,::1",
        description="reverse proxies (hosts or CIDRs, comma-separated; '' none, '*' any) whose "
        "X-Forwarded-For/-Proto name the client",
    )
    redis_url: str | None = Field(
        None,
        description="redis://[:password@]host:6379/0 (rediss:// for TLS): the live stream "
        "crosses processes (any `serve` streams what any `ingest` committed); unset: in-process",
    )
    live_client_queue: int = Field(
        1000, ge=10, description="frames a slow live client may fall behind before it gets a gap"
    )
    session_hours: float = Field(
        12.0, gt=0, le=24 * 366, description="lifetime of dashboard sign-in sessions (cookie)"
    )
    web_dir: Path | None = Field(
        None,
        description="the built dashboard to serve at / (index.html, assets/); default: the "
        "one inside the installed package",
    )
    notify_timeout: float = Field(
        10.0,
        gt=0,
        le=300,
        description="seconds one notification delivery may take (HTTP, SMTP, MQTT)",
    )
    notify_max_attempts: int = Field(
        8, ge=1, le=100, description="delivery attempts of a notification before it fails for good"
    )
    notify_allow: str = Field(
        "",
        description="hosts, addresses or CIDR networks (comma-separated) webhooks and Slack may "
        "reach although they are not public, e.g. '127.0.0.1,10.0.0.0/8,hooks.internal'",
    )
    smtp_host: str | None = Field(None, description="SMTP server for email notifications")
    smtp_port: int | None = Field(
        None, ge=1, le=65535, description="SMTP port; default 587 (starttls), 465 (tls), 25 (none)"
    )
    smtp_username: str | None = Field(None, description="SMTP login (none: no AUTH)")
    smtp_password: str | None = Field(None, description="SMTP password")
    smtp_from: str = Field("telemetra@localhost", description="From address of alert emails")
    smtp_security: str = Field(
        "starttls", pattern="^(starttls|tls|none)$", description="starttls, tls or none"
    )
    smtp_ca_file: Path | None = Field(
        None, description="CA certificate the SMTP server's must chain to (default: the system's)"
    )
    demo: bool = False
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="`telemetra ingest`: serve Prometheus metrics here"
    )
    log_format: str = Field("console", pattern="^(console|json)$")
    log_level: str = "INFO"
    expected_interval_s: float = Field(
        300.0,
        gt=0,
        description="`telemetra worker`: how often a device is expected to report, "
        "unless its type (TELEMETRA_EXPECTED_INTERVALS) or its metadata says; a device is offline "
        "after 3 intervals without a message",
    )
    expected_intervals: dict[str, float] = Field(
        default_factory=dict,
        description="expected report interval in seconds per device type, as JSON, e.g. "
        '\'{"freezer": 60, "greenhouse": 300}\'',
    )

    batch_max_messages: int = Field(4000, ge=1)
    batch_max_wait_ms: int = Field(50, ge=1)
    queue_max_messages: int = Field(12000, ge=1)
    max_payload_bytes: int = Field(256 * 1024, ge=64)
    deadletter_payload_bytes: int = Field(4096, ge=0)
    max_future_skew_s: float = Field(300.0, ge=0)
    late_after_s: float = Field(600.0, ge=0)
    clock_correct_after_s: float = Field(
        120.0, ge=0, description="correct device time when |offset| exceeds this"
    )

    @field_validator("secret_key")
    @classmethod
    def _not_trivial(cls, value: str | None) -> str | None:
        if value and trivial_secret(value):
            raise ValueError(
                "this key is trivial (a repeated pattern or fewer than 8 different "
                "characters); make one with "
                '`python -c "import secrets; print(secrets.token_urlsafe(48))"`'
            )
        return value

    @field_validator("notify_allow")
    @classmethod
    def _allow_list(cls, value: str) -> str:
        from telemetra.alerts.ssrf import parse_allow

        parse_allow(value)  # a clear error for a bad network
        return value

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo

        ZoneInfo(value)  # raises a clear error for an unknown IANA name
        return value

    @property
    def ca_folder(self) -> Path:
        """Where the installation CA lives."""
        return self.ca_dir or self.data_dir / "ca"

    @cached_property
    def sqlalchemy_url(self) -> str:
        """The async SQLAlchemy URL for the configured database."""
        return async_url(self.database_url or f"sqlite:///{self.data_dir / 'telemetra.db'}")


def async_url(url: str) -> str:
    """Map plain ``postgresql://`` / ``sqlite:///`` URLs onto the async drivers we ship."""
    for plain, driver in (
        ("postgresql://", "postgresql+asyncpg://"),
        ("postgres://", "postgresql+asyncpg://"),
        ("sqlite:///", "sqlite+aiosqlite:///"),
    ):
        if url.startswith(plain):
            return driver + url[len(plain) :]
    return url


def trivial_secret(key: str) -> bool:
    """True for a key anyone could guess whatever its length: one pattern repeated
    ("changeme" * 4) or fewer than 8 different characters ("k" * 48). A random key of 32
    characters (even hex) has about 14 different ones."""
    repeated = len(key) > 1 and key in (key + key)[1:-1]
    return repeated or len(set(key)) < 8
