"""Django's ASGI application, with an ASGI lifespan that flushes background recordings.

Django's ASGI handler does not speak the ASGI lifespan protocol, so under a bare
`uvicorn mysite.asgi:application` nothing of this package runs at shutdown: uvicorn ends
the process once its graceful shutdown is over, and recordings still queued are lost. Use
this instead of Django's own function in `mysite/asgi.py`::

    from freeplay_integrations.django.asgi import get_asgi_application

    application = get_asgi_application()

It answers lifespan startup at once, and at shutdown waits (in a worker thread, for up to
`shutdown_timeout` seconds) until background recordings are delivered or spooled.
"""

from __future__ import annotations

from django.core.asgi import get_asgi_application as get_django_asgi_application

from .._asgi import ASGIApp, Receive, Scope, Send, flush_at_shutdown

__all__ = ["get_asgi_application", "with_recording_lifespan"]


def with_recording_lifespan(app: ASGIApp, *, shutdown_timeout: float | None = None) -> ASGIApp:
    """`app` (an ASGI app without lifespan support) answering lifespan itself.

    `shutdown_timeout` defaults to the recorder's one (`configure_recording(shutdown_timeout=)`).
    """

    async def application(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await flush_at_shutdown(shutdown_timeout)
                await send({"type": "lifespan.shutdown.complete"})
                return

    return application


def get_asgi_application(*, shutdown_timeout: float | None = None) -> ASGIApp:
    """`django.core.asgi.get_asgi_application()`, flushing recordings at lifespan shutdown."""
    return with_recording_lifespan(
        get_django_asgi_application(),  # type: ignore[arg-type]
        shutdown_timeout=shutdown_timeout,
    )
