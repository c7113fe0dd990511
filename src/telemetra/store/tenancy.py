"""The tenant a unit of work may see, for PostgreSQL Row-Level Security.

The application scopes every query itself; RLS is the second line beneath it. The API sets
``TENANT_SCOPE`` for the request's caller, and each connection taken from the pool carries it
into ``telemetra.tenant_id``, which the policies of migration 0003 compare with each row's
tenant. ``"*"`` is a platform admin; ``""`` (unscoped) is ingest, the CLI and migrations.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

TENANT_SCOPE: ContextVar[str] = ContextVar("telemetra_tenant_scope", default="")
ALL_TENANTS = "*"


def scope_to(tenant_id: int | None) -> None:
    """Scope the current task's queries to one tenant (None: every tenant, for admins)."""
    TENANT_SCOPE.set(ALL_TENANTS if tenant_id is None else str(tenant_id))


def apply_scope(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Pool checkout hook (PostgreSQL): carry the task's scope into the session.

    Set at every checkout once a connection has been scoped (the setting may have been rolled
    back with its transaction); a connection that never was stays unscoped for free, so
    ingest workers pay no extra round trip.
    """
    scope = TENANT_SCOPE.get()
    if not scope and not record.info.get("scoped"):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("SELECT set_config('telemetra.tenant_id', $1, false)", (scope,))
    cursor.close()
    record.info["scoped"] = True
