"""Telemetry queries: raw history, aggregates, latest values, quality, dead letters, export."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["telemetry"])
