"""Configuration for the MQTT broker that devices connect to (Mosquitto)."""

from telemetra.broker.mosquitto import broker_accounts, split_accounts, write_config

__all__ = ["broker_accounts", "split_accounts", "write_config"]
