"""The tenant a unit of work may see, for PostgreSQL Row-Level Security.

The application scopes every query itself; RLS is the second line beneath it, and it fails
closed: the policies (migration 0008) show a session the rows of the tenant in
``telemetra.tenant_id``, every row for ``*``, and nothing when the setting is unset or empty.

Platform-wide processes (ingest workers, the CLI, migrations) open their engine with
``ALL_TENANTS``: each connection starts with ``*`` (a startup parameter, no extra round trip).
``serve`` opens its engine with ``NO_TENANT``: a connection sees nothing until the request says
whose it is (``scope_to`` for an authenticated caller, ``platform_wide`` for look-ups before
authentication such as login and device tokens, and for the HTTP ingest pipeline).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TypeVar

T = TypeVar("T")
ALL_TENANTS = "*"
NO_TENANT = ""
# None: the engine's own default scope (see ``scope_hook``).
TENANT_SCOPE: ContextVar[str | None] = ContextVar("telemetra_tenant_scope", default=None)


def scope_to(tenant_id: int | None) -> None:
    """Scope the current task's queries to one tenant (None: every tenant, for admins)."""
    TENANT_SCOPE.set(ALL_TENANTS if tenant_id is None else str(tenant_id))


@contextmanager
def platform_wide() -> Iterator[None]:
    """Connections taken inside see every tenant: work that is not one tenant's by nature
    (finding the user who logs in, the device a token belongs to, the broker's accounts)."""
    token = TENANT_SCOPE.set(ALL_TENANTS)
    try:
        yield
    finally:
        TENANT_SCOPE.reset(token)


def run_platform_wide(start: Callable[[], T]) -> T:
    """Call ``start`` in a copy of this context scoped to every tenant: tasks it creates (a
    background worker such as HTTP ingest's pipeline) keep that scope; the caller's is unchanged.
    """
    context = contextvars.copy_context()
    context.run(TENANT_SCOPE.set, ALL_TENANTS)
    return context.run(start)


def scope_hook(default: str) -> Callable[[Any, Any, Any], None]:
    """A pool checkout hook (PostgreSQL) carrying the task's scope into the session.

    Connections start at ``default`` (the engine's startup parameter), so a connection that
    was never scoped otherwise costs nothing. Once scoped it is set at every checkout (the
    setting may also have been rolled back with its transaction).
    """

    def apply_scope(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        chosen = TENANT_SCOPE.get()
        if chosen is None and not record.info.get("scoped"):
            return
        cursor = dbapi_connection.cursor()
        scope = default if chosen is None else chosen
        cursor.execute("SELECT set_config('telemetra.tenant_id', $1, false)", (scope,))
        cursor.close()
        record.info["scoped"] = True

    return apply_scope
