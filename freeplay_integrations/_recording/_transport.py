"""The SDK transport: the one place that touches the Freeplay SDK's internals.

Checked against freeplay 0.6.1. The SDK sends every call through one module-level
`requests.Session` (`freeplay.api_support._session`) with an `HTTPAdapter` per scheme that
retries connections (urllib3 `connect=3`) and keeps 10 connections per host. Neither
suits a recorder: a retry underneath an attempt makes its time limit a lie, and 10
connections cap the requests in flight. So the transport mounts, for the client's
`api_base` only, an adapter that sends the recorder's calls through its own pool (no
urllib3 retries, sized to the recorder's ceiling, one total time limit per request) and
passes every other call (your own SDK calls) to the adapter that served it before.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import requests
import urllib3
from freeplay import api_support
from freeplay.errors import FreeplayError
from requests.adapters import BaseAdapter, HTTPAdapter

if TYPE_CHECKING:
    from freeplay import Freeplay
    from freeplay.support import CallSupport

    from ._operations import Operation

__all__ = ["TRANSIENT_STATUSES", "Failure", "SdkResources", "SdkTransport", "classify"]

#: Statuses retried besides 5xx.
TRANSIENT_STATUSES = frozenset({408, 425, 429})

_STATUS_IN_MESSAGE = re.compile(r"\[(\d{3})\]\s*$")


@dataclass(frozen=True)
class Failure:
    """What a failed attempt means."""

    #: Worth retrying (connection error, time limit, 408, 425, 429, 5xx).
    transient: bool
    #: The HTTP status, when Freeplay answered.
    status: int | None
    #: Seconds Freeplay asked to wait (`Retry-After`), when it said.
    retry_after: float | None
    reason: str


class _Attempt:
    """The running attempt: its deadline, and the last response seen (for Retry-After)."""

    __slots__ = ("deadline", "response")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.response: requests.Response | None = None


_attempt: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "freeplay_recorder_attempt", default=None
)


def _no_retries() -> urllib3.Retry:
    return urllib3.Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False)


class _RecorderAdapter(BaseAdapter):
    """Serves one Freeplay `api_base` on the SDK's session.

    Inside an attempt: our own pool, no retries, a total time limit (connect and read
    together) of what is left of the attempt. Outside: the adapter that was there before.
    """

    def __init__(self, inner: BaseAdapter, pool_size: int) -> None:
        super().__init__()
        self.inner = inner
        self.pool_size = pool_size
        self.own = HTTPAdapter(
            pool_connections=4, pool_maxsize=pool_size, max_retries=_no_retries()
        )

    def grow(self, pool_size: int) -> None:
        if pool_size > self.pool_size:
            self.pool_size = pool_size
            self.own.init_poolmanager(4, pool_size)

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        attempt = _attempt.get()
        if attempt is None:
            return self.inner.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )
        remaining = attempt.deadline - time.monotonic()
        if remaining <= 0:
            raise requests.Timeout("the attempt's time limit was spent before this request")
        response = self.own.send(
            request,
            stream=stream,
            timeout=urllib3.Timeout(total=remaining),  # type: ignore[arg-type]  # requests takes it
            verify=verify,
            cert=cert,
            proxies=proxies,
        )
        attempt.response = response
        return response

    def close(self) -> None:
        self.inner.close()
        self.own.close()

    def after_fork(self) -> None:
        """Give the child its own pools (the parent's hold its sockets, maybe its locks)."""
        self.own.proxy_manager = {}
        self.own.init_poolmanager(4, self.pool_size)
        inner = self.inner
        if isinstance(inner, HTTPAdapter):
            # requests keeps the pool sizes it was built with in these (untyped) attributes.
            connections = getattr(inner, "_pool_connections", 10)
            maxsize = getattr(inner, "_pool_maxsize", 10)
            inner.proxy_manager = {}
            inner.init_poolmanager(connections, maxsize, block=getattr(inner, "_pool_block", False))


_adapters: dict[str, _RecorderAdapter] = {}
_adapters_lock = threading.Lock()


def _mount(api_base: str, pool_size: int) -> None:
    prefix = api_base.rstrip("/") + "/"
    session = api_support._session
    with _adapters_lock:
        current = session.adapters.get(prefix)
        if isinstance(current, _RecorderAdapter):
            current.grow(pool_size)
            return
        try:
            inner = session.get_adapter(prefix)
        except requests.exceptions.InvalidSchema:
            return  # not an http(s) URL: the SDK cannot call it either
        adapter = _RecorderAdapter(inner, pool_size)
        session.mount(prefix, adapter)
        _adapters[prefix] = adapter


def after_fork() -> None:
    global _adapters_lock
    _adapters_lock = threading.Lock()
    for adapter in list(_adapters.values()):
        adapter.after_fork()


class SdkResources:
    """The SDK resources operations send through (not the client: it may be collected)."""

    __slots__ = (
        "api_base",
        "call_support",
        "customer_feedback",
        "metadata",
        "recordings",
        "sessions",
    )

    def __init__(self, client: Freeplay) -> None:
        self.call_support: CallSupport = client.call_support
        self.api_base: str = str(client.call_support.api_base)
        self.recordings = client.recordings
        self.sessions = client.sessions
        self.customer_feedback = client.customer_feedback
        self.metadata = client.metadata


#: Attempt time limit when `send` is given none.
DEFAULT_ATTEMPT_TIMEOUT = 10.0


class SdkTransport:
    """Sends operations with the official SDK, one attempt at a time."""

    def __init__(self, client: Freeplay, *, pool_size: int = 10) -> None:
        self.sdk = SdkResources(client)
        self.api_base = self.sdk.api_base
        _mount(self.api_base, pool_size)

    def __repr__(self) -> str:
        return f"<SdkTransport {self.api_base}>"

    def resize(self, pool_size: int) -> None:
        """Keep at least `pool_size` connections to Freeplay."""
        _mount(self.api_base, pool_size)

    def send(self, op: Operation, timeout: float | None = None) -> str | None:
        """One attempt, bounded as a whole by `timeout` seconds. Raises on failure.

        Returns the completion ID Freeplay answered for a completion, else None.
        """
        limit = DEFAULT_ATTEMPT_TIMEOUT if timeout is None else timeout
        attempt = _Attempt(time.monotonic() + limit)
        token = _attempt.set(attempt)
        try:
            return op.send(self.sdk)
        except Exception as exc:
            response = attempt.response
            if response is not None and response.status_code >= 400:
                exc.__dict__.setdefault("_freeplay_response", response)
            raise
        finally:
            _attempt.reset(token)

    def classify(self, exc: BaseException) -> Failure:
        return classify(exc)


def classify(exc: BaseException) -> Failure:
    """Classify an exception raised by an SDK call (`SdkTransport.send`).

    `recordings.create` wraps the `requests` exception in a `FreeplayError` (as its
    `__cause__`); the other calls raise `FreeplayClientError`/`FreeplayServerError` with the
    status at the end of the message (`... [503]`), or let `requests` exceptions escape.
    The transport keeps the last error response of the attempt on the exception, for its
    status and `Retry-After`.
    """
    kept = getattr(exc, "__dict__", {}).get("_freeplay_response")
    if isinstance(kept, requests.Response):
        return _by_response(kept)
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, requests.HTTPError) and error.response is not None:
            return _by_response(error.response)
        if isinstance(
            error,
            (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError),
        ):
            return Failure(True, None, None, f"{type(error).__name__}: {error}")
        if isinstance(error, FreeplayError):
            match = _STATUS_IN_MESSAGE.search(str(error))
            if match is not None:
                return _by_status(int(match.group(1)), None, str(error))
        error = error.__cause__ or error.__context__
    return Failure(False, None, None, f"{type(exc).__name__}: {exc}")


def _by_response(response: requests.Response) -> Failure:
    status = response.status_code
    try:
        text = " ".join(response.text.split())[:300]
    except Exception:  # pragma: no cover - defensive
        text = ""
    reason = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    return _by_status(status, _retry_after(response.headers.get("Retry-After")), reason)


def _by_status(status: int, retry_after: float | None, reason: str) -> Failure:
    transient = status >= 500 or status in TRANSIENT_STATUSES
    return Failure(transient, status, retry_after if transient else None, reason)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
