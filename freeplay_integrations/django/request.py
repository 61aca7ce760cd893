"""What the middleware puts on the request: `request.freeplay_session`, and its type."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from freeplay.resources.sessions import Session

from .._context import SessionBinding

__all__ = ["FreeplayHttpRequest", "RequestSession"]


class RequestSession(Session):
    """`request.freeplay_session`: the request's current Freeplay `Session`.

    A `Session` that stands for the one the request has *now*: after `new_session()` it is
    the new one, as `current_session()` is, so code holding `request.freeplay_session` never
    records into the conversation the user just left. Its fields (and so the SDK's own
    methods, `create_trace` ...) read that session.
    """

    __slots__ = ("_binding",)  # no instance dict to build, per request

    _binding: SessionBinding

    # Made by `RequestSession.of(binding)`. Object's own C `__init__`, not a Python one (nor
    # the SDK dataclass's: it has no fields): on 3.11 a Python `__init__` costs about 0.7k
    # instructions a request more.
    __init__ = object.__init__

    @classmethod
    def of(cls, binding: SessionBinding) -> RequestSession:
        """The `request.freeplay_session` of a request bound to `binding`."""
        session: RequestSession = cls()
        session._binding = binding
        return session

    @property
    def session_id(self) -> str:
        return str(self._binding.session.session_id)

    @session_id.setter
    def session_id(self, value: str) -> None:
        self._binding.session.session_id = value

    @property
    def custom_metadata(self) -> Any:
        return self._binding.session.custom_metadata

    @custom_metadata.setter
    def custom_metadata(self, value: Any) -> None:
        self._binding.session.custom_metadata = value

    @property
    def _session_info(self) -> Any:  # type: ignore[override]
        return self._binding.session._session_info

    @property
    def _call_support(self) -> Any:  # type: ignore[override]
        return self._binding.session._call_support

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RequestSession):
            other = other._binding.session
        return bool(self._binding.session == other)

    __hash__ = None  # type: ignore[assignment]  # like the SDK's Session (a dataclass)

    def __repr__(self) -> str:
        return f"<RequestSession {self._binding.session_id}>"


class FreeplayHttpRequest(HttpRequest):
    """For type hints in views, like django-htmx's `HtmxHttpRequest`::

        def chat(request: FreeplayHttpRequest) -> HttpResponse:
            request.freeplay_session.session_id

    `freeplay_session` is None on an excluded path.
    """

    freeplay_session: Session | None
