"""Send the current Freeplay session to your own services, over httpx.

A downstream service that runs this package's middleware joins the session named in the
session header, so a conversation that crosses services records into one session. Opt in
per client, and name the hosts that may receive the header::

    import httpx
    from freeplay_integrations.httpx import propagate_session

    internal = propagate_session(httpx.Client(), allow_hosts=["*.internal.example"])
    internal.get("https://search.internal.example/q")   # carries X-Freeplay-Session-Id

Two ways, one behaviour:

- `propagate_session(client, allow_hosts=...)` adds a request event hook to an existing
  `httpx.Client` or `httpx.AsyncClient`, after the request hooks it already has, and
  before any transport, so it covers mounted transports and proxies too. Recommended.
- `SessionPropagatingTransport(inner, allow_hosts=...)` (and
  `AsyncSessionPropagatingTransport`) wraps a transport, for code that builds transport
  stacks. Requests routed to other transports by `mounts=` do not pass through it, and,
  as with any `transport=`, the client's `verify=`, `http2=`, `limits=` and `proxy=` do not
  apply to it: configure them on the inner transport.

Only hosts on the allowlist get the header: the default allowlist is empty, so a session ID
never reaches a third-party API (OpenAI, Anthropic, ...) by accident. Outside a session
nothing is added (nor after `end_session()`), and a session header the caller set is
never overwritten. If a request
that got the header is redirected to a host not on the allowlist, the header is removed.

The value sent is what the downstream middleware accepts: the session ID, signed when the
upstream middleware has a `signing_secret` (the downstream service must then have the same
secret). `signing_secret=` here signs with that secret instead, e.g. in a worker or script.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

try:
    import httpx
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "freeplay_integrations.httpx needs httpx. "
        "Install it with: pip install 'freeplay-integrations[httpx]'"
    ) from exc

from ._config import DEFAULT_SESSION_HEADER, keyword_option, validate_option
from ._context import current_binding
from ._errors import ConfigurationError
from ._ids import Signer

__all__ = [
    "LOG_EMPTY_ALLOWLIST",
    "LOG_PREDICATE_FAILED",
    "PROPAGATED_EXTENSION",
    "AllowHosts",
    "AsyncSessionPropagatingTransport",
    "HostAllowlist",
    "SessionPropagatingTransport",
    "propagate_session",
]

logger = logging.getLogger("freeplay_integrations")

#: Request extension that remembers the header value this module added, so that a
#: redirect to a host not on the allowlist can take it off again.
PROPAGATED_EXTENSION = "freeplay_session_header"
LOG_EMPTY_ALLOWLIST = (
    "freeplay_integrations.httpx: allow_hosts is empty, so no request will carry the "
    "Freeplay session header; list your own services' hosts"
)
LOG_PREDICATE_FAILED = (
    "freeplay_integrations.httpx: the allow_hosts callable raised; the request goes out "
    "without the session header"
)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_FORBIDDEN = frozenset("/@?#\\ \t\r\n")
_ClientT = TypeVar("_ClientT", httpx.Client, httpx.AsyncClient)


class HostAllowlist:
    """Which request URLs may carry the session header.

    Patterns, matched case-insensitively against the URL's host (internationalised names in
    either form; a trailing dot is ignored):

    - `"api.internal"`: that host, on any port.
    - `"api.internal:8443"`, `"[::1]:8000"`: that host on that port only (a URL without a
      port has its scheme's default port: 80 for http, 443 for https).
    - `"*.internal.example"`: any host under `internal.example`, at any depth
      (`a.internal.example`, `a.b.internal.example`), but not `internal.example` itself:
      list it too if it should get the header.

    Or a callable `allow(url: httpx.URL) -> bool`; if it raises, the header is not sent.
    A bare `"*"` is refused: it would send session IDs to every third-party API.
    """

    __slots__ = ("_exact", "_predicate", "_suffixes", "patterns")

    def __init__(self, hosts: Iterable[str] | Callable[[httpx.URL], bool] = ()) -> None:
        self._exact: dict[str, set[int | None]] = {}
        self._suffixes: list[tuple[str, int | None]] = []
        self._predicate: Callable[[httpx.URL], bool] | None = None
        self.patterns: tuple[str, ...] = ()
        if callable(hosts):
            self._predicate = hosts
            return
        if isinstance(hosts, str):
            hosts = (hosts,)
        try:
            patterns = tuple(hosts)
        except TypeError:
            raise ConfigurationError(
                "allow_hosts must be a list of host patterns such as "
                "['api.internal', '*.internal.example'] or a callable(url) -> bool, "
                f"not {hosts!r}."
            ) from None
        for pattern in patterns:
            host, wildcard, port = _parse_pattern(pattern)
            if wildcard:
                self._suffixes.append(("." + host, port))
            else:
                self._exact.setdefault(host, set()).add(port)
        self.patterns = patterns

    @property
    def empty(self) -> bool:
        """True when no URL can match (no patterns and no callable)."""
        return self._predicate is None and not self._exact and not self._suffixes

    def allows(self, url: httpx.URL) -> bool:
        """True if a request to `url` may carry the session header."""
        predicate = self._predicate
        if predicate is not None:
            try:
                return bool(predicate(url))
            except Exception:
                logger.exception(LOG_PREDICATE_FAILED)
                return False
        host = url.raw_host.decode("ascii").lower().rstrip(".")
        port = url.port if url.port is not None else _DEFAULT_PORTS.get(url.scheme)
        ports = self._exact.get(host)
        if ports is not None and (None in ports or port in ports):
            return True
        return any(
            host.endswith(suffix) and (want is None or want == port)
            for suffix, want in self._suffixes
        )

    def __repr__(self) -> str:
        if self._predicate is not None:
            return f"<HostAllowlist {self._predicate!r}>"
        return f"<HostAllowlist {list(self.patterns)!r}>"


#: Host patterns (`"api.internal"`, `"api.internal:8443"`, `"*.internal.example"`), a
#: callable that gets the request's `httpx.URL` and returns True to send the header, or a
#: ready `HostAllowlist`.
AllowHosts = Iterable[str] | Callable[[httpx.URL], bool] | HostAllowlist


def _parse_pattern(pattern: Any) -> tuple[str, bool, int | None]:
    """`(ascii host, is "*." suffix pattern, port or None)` for one allowlist pattern."""

    def invalid(why: str) -> ConfigurationError:
        return ConfigurationError(
            f"allow_hosts entry {pattern!r} {why}. Give host names such as 'api.internal', "
            "'api.internal:8443' or '*.internal.example' (no scheme or path), or a "
            "callable(url) -> bool."
        )

    if not isinstance(pattern, str):
        raise invalid("is not a string")
    text = pattern.strip().lower()
    if text == "*" or text == "*.":
        raise ConfigurationError(
            "allow_hosts may not be '*': it would send the session ID to every host, "
            "third-party LLM APIs included. List your own services' hosts, or pass a "
            "callable(url) -> bool if you really mean it."
        )
    if not text:
        raise invalid("is empty")
    if "://" in text or any(c in _FORBIDDEN for c in text):
        raise invalid("is not a host name")
    wildcard = text.startswith("*.")
    if wildcard:
        text = text[2:]
    if "*" in text:
        raise invalid("has a '*' that is not a leading '*.'")
    port_text: str | None = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (text[end + 1 :] and not text[end + 1 :].startswith(":")):
            raise invalid("is not a valid [IPv6]:port")
        host, port_text = text[1:end], text[end + 2 :] or None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host = text  # a name, or a bare IPv6 address
    host = host.rstrip(".")
    if not host or (wildcard and ":" in host):
        raise invalid("has no host name")
    port: int | None = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise invalid("has an invalid port")
        port = int(port_text)
    try:
        ascii_host = httpx.URL(scheme="http", host=host).raw_host.decode("ascii")
    except (httpx.InvalidURL, UnicodeError, ValueError):
        raise invalid("is not a valid host name") from None
    return ascii_host.lower(), wildcard, port


def _httpx_option(option: str) -> str:
    """Error messages name `propagate_session()`'s own keywords."""
    return keyword_option("header_name" if option == "session_header" else option)


class _Propagator:
    """Adds the session header to one request when it should carry it."""

    __slots__ = ("allowlist", "header_name", "signer")

    def __init__(self, allow_hosts: AllowHosts, header_name: str, signing_secret: Any) -> None:
        allowlist = (
            allow_hosts if isinstance(allow_hosts, HostAllowlist) else HostAllowlist(allow_hosts)
        )
        if allowlist.empty:
            logger.warning(LOG_EMPTY_ALLOWLIST)
        name = validate_option("session_header", header_name, _httpx_option)
        if name is None:
            raise ConfigurationError(
                "header_name may not be None: it is the header the downstream middleware "
                f"reads (its `session_header=`, by default {DEFAULT_SESSION_HEADER!r})."
            )
        self.allowlist = allowlist
        self.header_name = name
        self.signer: Signer | None = validate_option(
            "signing_secret", signing_secret, _httpx_option
        )

    def apply(self, request: httpx.Request) -> None:
        headers = request.headers
        present = headers.get(self.header_name)
        if present is not None:
            # Set by the caller: left alone. Added by us, then redirected to a host that is
            # not allowed: taken off again.
            ours = request.extensions.get(PROPAGATED_EXTENSION)
            if ours is not None and present == ours and not self.allowlist.allows(request.url):
                del headers[self.header_name]
            return
        binding = current_binding()
        if binding is None or binding.ended or not self.allowlist.allows(request.url):
            return  # outside a session, after end_session(), or not an allowed host
        signer = self.signer
        value = binding.token if signer is None else signer.sign(binding.session_id)
        headers[self.header_name] = value
        extensions = request.extensions
        if isinstance(extensions, dict):
            extensions[PROPAGATED_EXTENSION] = value


class _RequestHook:
    __slots__ = ("propagator",)

    def __init__(self, propagator: _Propagator) -> None:
        self.propagator = propagator

    def __call__(self, request: httpx.Request) -> None:
        self.propagator.apply(request)

    def __repr__(self) -> str:
        return f"<freeplay session hook {self.propagator.allowlist!r}>"


class _AsyncRequestHook(_RequestHook):
    __slots__ = ()

    async def __call__(self, request: httpx.Request) -> None:  # type: ignore[override]
        self.propagator.apply(request)


def propagate_session(
    client: _ClientT,
    *,
    allow_hosts: AllowHosts,
    header_name: str = DEFAULT_SESSION_HEADER,
    signing_secret: str | bytes | list[str | bytes] | None = None,
) -> _ClientT:
    """Make `client` send the current session in `header_name` to the allowed hosts.

    Works on `httpx.Client` and `httpx.AsyncClient`: appends a request event hook, after
    the client's own. Returns the same client, so it can wrap a constructor call.
    Calling it twice on one client is a `RuntimeError`.
    """
    if not isinstance(client, (httpx.Client, httpx.AsyncClient)):
        raise TypeError(
            f"propagate_session() takes an httpx.Client or httpx.AsyncClient, not {client!r}. "
            "For a transport, wrap it in SessionPropagatingTransport instead."
        )
    hooks: dict[str, list[Any]] = client.event_hooks
    if any(isinstance(existing, _RequestHook) for existing in hooks["request"]):
        raise RuntimeError(
            f"{client!r} already propagates the Freeplay session: call propagate_session() "
            "once per client (make a new client for a different allowlist)."
        )
    propagator = _Propagator(allow_hosts, header_name, signing_secret)
    hook = (
        _AsyncRequestHook(propagator)
        if isinstance(client, httpx.AsyncClient)
        else _RequestHook(propagator)
    )
    client.event_hooks = {**hooks, "request": [*hooks["request"], hook]}
    return client


class SessionPropagatingTransport(httpx.BaseTransport):
    """Wrap a transport so that requests through it carry the current session.

    `transport` defaults to a new `httpx.HTTPTransport()`; give your own (retries,
    proxies, ...) to keep it. Use as `httpx.Client(transport=...)`.
    """

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        *,
        allow_hosts: AllowHosts = (),
        header_name: str = DEFAULT_SESSION_HEADER,
        signing_secret: str | bytes | list[str | bytes] | None = None,
    ) -> None:
        self.transport = transport if transport is not None else httpx.HTTPTransport()
        self._propagator = _Propagator(allow_hosts, header_name, signing_secret)

    @property
    def allowlist(self) -> HostAllowlist:
        return self._propagator.allowlist

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._propagator.apply(request)
        return self.transport.handle_request(request)

    def __enter__(self) -> SessionPropagatingTransport:
        self.transport.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        self.transport.__exit__(exc_type, exc, tb)

    def close(self) -> None:
        self.transport.close()


class AsyncSessionPropagatingTransport(httpx.AsyncBaseTransport):
    """The `httpx.AsyncClient` twin of `SessionPropagatingTransport`."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        allow_hosts: AllowHosts = (),
        header_name: str = DEFAULT_SESSION_HEADER,
        signing_secret: str | bytes | list[str | bytes] | None = None,
    ) -> None:
        self.transport = transport if transport is not None else httpx.AsyncHTTPTransport()
        self._propagator = _Propagator(allow_hosts, header_name, signing_secret)

    @property
    def allowlist(self) -> HostAllowlist:
        return self._propagator.allowlist

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._propagator.apply(request)
        return await self.transport.handle_async_request(request)

    async def __aenter__(self) -> AsyncSessionPropagatingTransport:
        await self.transport.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        await self.transport.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        await self.transport.aclose()
