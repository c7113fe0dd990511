"""Tenants and users."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["tenants and users"])
