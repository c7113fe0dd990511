"""Configuration for the MQTT broker that devices connect to (Mosquitto)."""

from telemetra.broker.mosquitto import (
    SyncResult,
    broker_accounts,
    broker_state,
    split_accounts,
    sync_accounts,
    sync_lock,
    write_config,
)

__all__ = [
    "SyncResult",
    "broker_accounts",
    "broker_state",
    "split_accounts",
    "sync_accounts",
    "sync_lock",
    "write_config",
]
