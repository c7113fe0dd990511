"""Prometheus metrics: what flows through ingest and how the API answers."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter(
    "telemetra_ingest_messages_total", "Messages processed by the pipeline", ["source"]
)
READINGS = Counter("telemetra_ingest_readings_total", "Readings stored (new rows)")
REJECTIONS = Counter(
    "telemetra_ingest_rejections_total", "Rejected messages or values, by reason", ["reason"]
)
DUPLICATE_REJECTIONS = Counter(
    "telemetra_ingest_duplicate_rejections_total",
    "Rejections already dead-lettered (a redelivery or a file imported again): not counted "
    "again in telemetra_ingest_rejections_total",
    ["reason"],
)
BATCH_SECONDS = Histogram(
    "telemetra_ingest_batch_commit_seconds",
    "Time to commit one batch (readings, rollups, quality, dead letters)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QUEUE_DEPTH = Gauge("telemetra_ingest_queue_depth", "Messages received, not yet in a batch")
DB_RETRIES = Counter(
    "telemetra_ingest_db_retries_total", "Batch attempts that found the database unavailable"
)
HTTP_SECONDS = Histogram(
    "telemetra_http_request_seconds",
    "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
LIVE_CLIENTS = Gauge("telemetra_live_clients", "Live stream clients (WebSocket and SSE) connected")
LIVE_DROPPED = Counter(
    "telemetra_live_dropped_total",
    "Live frames not delivered: to a slow client whose queue was full (slow_client), or "
    "readings the bus could not publish in time (publisher)",
    ["where"],
)
LIVE_PUBLISH_ERRORS = Counter(
    "telemetra_live_publish_errors_total", "Attempts to publish to Redis that failed"
)
NOTIFICATIONS = Counter(
    "telemetra_notifications_total",
    "Alert notification delivery attempts by channel and result: delivered, retry (pending "
    "again after a transient error) or failed (for good)",
    ["channel", "result"],
)
NOTIFICATION_FAILURES = Counter(
    "telemetra_notification_failures_total",
    "Notifications that failed for good, by channel and why: permanent (refused by the target, "
    "a bad address), refused (not a public address) or gave_up (attempts used up)",
    ["channel", "reason"],
)
ALERT_EVALUATED = Counter(
    "telemetra_alert_readings_evaluated_total", "Committed readings the worker evaluated"
)
WORKER_ACTIVE = Gauge("telemetra_worker_active", "1 while this worker holds the active lock")
