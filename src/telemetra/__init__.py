"""Telemetra: IoT telemetry from raw device data to clean time series."""

__version__ = "0.1.0"
