"""FastAPI: the request's Freeplay session as a dependency.

    from freeplay_integrations.fastapi import CurrentSession

    @app.get("/chat")
    async def chat(session: CurrentSession) -> dict[str, str]:
        return {"session_id": session.session_id}

`CurrentSession` needs `freeplay_integrations.asgi.FreeplaySessionMiddleware` on the app.
"""

from __future__ import annotations

from typing import Annotated

try:
    from fastapi import Depends
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.fastapi needs FastAPI. "
        "Install it with: pip install 'freeplay-integrations[fastapi]'"
    ) from exc

from freeplay.resources.sessions import Session

from ._context import require_session

__all__ = ["CurrentSession", "get_current_session"]


async def get_current_session() -> Session:
    """The request's session; raises `NoActiveSessionError` without the middleware."""
    return require_session()


CurrentSession = Annotated[Session, Depends(get_current_session)]
