"""Things `FREEPLAY` names by dotted path in the tests: a client factory and request hooks."""

from __future__ import annotations

import os
from typing import Any

from django.http import HttpRequest
from django.utils.asyncio import async_unsafe
from freeplay import Freeplay

#: A ready client (records nowhere: sessions need no network call).
CLIENT = Freeplay(freeplay_api_key="test-key", api_base="http://127.0.0.1:9/api")


def client_from_env() -> Freeplay:
    """A client for the server in `FREEPLAY_API_BASE` (the `freeplay_local_env` fixture)."""
    return Freeplay(
        freeplay_api_key=os.environ["FREEPLAY_API_KEY"], api_base=os.environ["FREEPLAY_API_BASE"]
    )


def tenant_metadata(request: HttpRequest) -> dict[str, Any]:
    return {"tenant": request.headers.get("X-Tenant", "none")}


def allow_only_trusted(request: HttpRequest, session_id: str) -> bool:
    return request.headers.get("X-Trusted") == "yes"


@async_unsafe
def _database_query() -> str:
    """Stands for an ORM call: Django refuses it inside an event loop."""
    return "acme"


def tenant_from_database(request: HttpRequest) -> dict[str, Any]:
    return {"tenant": _database_query()}


def owner_from_database(request: HttpRequest, session_id: str) -> bool:
    return _database_query() == "acme"
