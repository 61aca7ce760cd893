"""Django system checks: `manage.py check` (and `runserver`, `migrate`) report every
misconfiguration of the integration, each with a stable ID and a hint.

Settings (`FREEPLAY` dict and environment), all reported in one run:

- `freeplay_integrations.E001`: no Freeplay client: no API key (or API base URL), or a
  `CLIENT` that does not import or is not a client.
- `freeplay_integrations.E002`: no project ID, or a malformed one.
- `freeplay_integrations.E003`: an unknown key in `FREEPLAY` (a typo; the closest key is named).
- `freeplay_integrations.E004`: `ON_INVALID` (or `ON_UNAUTHORIZED`) is not `"new"` or
  `"reject"`.
- `freeplay_integrations.E005`: a bad `COOKIE_SAMESITE` (or `"none"` without Secure cookies).
- `freeplay_integrations.E006`: any other malformed option (the message names it).

`MIDDLEWARE`:

- `freeplay_integrations.W001`: `FreeplaySessionMiddleware` is not in `MIDDLEWARE`.
- `freeplay_integrations.W002`: it comes after middleware that answer requests, or replace
  responses, on their own; those responses then miss the session header.
- `freeplay_integrations.E007`: it comes after Django's cache middleware, which then serves a
  cached response carrying another visitor's session cookie and header.
- `freeplay_integrations.W003`: `SESSION_METADATA` or `AUTHORIZE_SESSION` is set but the
  middleware comes before `AuthenticationMiddleware` (no `request.user` yet).
- `freeplay_integrations.W004`: django-cors-headers, above it, replaces its
  `Access-Control-Expose-Headers` with `CORS_EXPOSE_HEADERS`, which lacks the session header.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.utils.module_loading import import_string

from .._config import DEFAULT_SESSION_HEADER, OPTION_NAMES, Settings
from .._errors import ConfigurationError
from . import conf

__all__ = [
    "AUTHENTICATION_MIDDLEWARE",
    "CACHE_MIDDLEWARE",
    "CHECK_IDS",
    "CORS_MIDDLEWARE",
    "MIDDLEWARE_PATHS",
    "RECOMMENDED_POSITION",
    "RESPONDING_MIDDLEWARE",
    "check_middleware",
    "check_settings",
]

#: Every ID these checks report, with what it is about.
CHECK_IDS: Final = {
    "freeplay_integrations.E001": "no usable Freeplay client (API key, API base or CLIENT)",
    "freeplay_integrations.E002": "no usable Freeplay project ID",
    "freeplay_integrations.E003": "unknown key in FREEPLAY",
    "freeplay_integrations.E004": "bad ON_INVALID or ON_UNAUTHORIZED",
    "freeplay_integrations.E005": "bad COOKIE_SAMESITE",
    "freeplay_integrations.E006": "other malformed FREEPLAY option",
    "freeplay_integrations.E007": "middleware after the cache middleware",
    "freeplay_integrations.W001": "middleware missing from MIDDLEWARE",
    "freeplay_integrations.W002": "middleware after middleware that answer on their own",
    "freeplay_integrations.W003": "middleware before AuthenticationMiddleware with hooks",
    "freeplay_integrations.W004": "CORS_EXPOSE_HEADERS hides the session header",
}

#: How `FreeplaySessionMiddleware` may be written in `MIDDLEWARE`.
MIDDLEWARE_PATHS: Final = (
    "freeplay_integrations.django.FreeplaySessionMiddleware",
    "freeplay_integrations.django.middleware.FreeplaySessionMiddleware",
)
#: Middleware that serve cached responses: the session middleware must come before them.
CACHE_MIDDLEWARE: Final = (
    "django.middleware.cache.CacheMiddleware",
    "django.middleware.cache.FetchFromCacheMiddleware",
)
#: Middleware that answer requests, or replace responses, without the layers below them.
RESPONDING_MIDDLEWARE: Final = (
    "django.middleware.common.CommonMiddleware",  # redirects (APPEND_SLASH, PREPEND_WWW)
    "django.middleware.locale.LocaleMiddleware",  # language redirects
    "django.middleware.http.ConditionalGetMiddleware",  # 304s
    "django.contrib.flatpages.middleware.FlatpageFallbackMiddleware",
    "django.contrib.redirects.middleware.RedirectFallbackMiddleware",
    "corsheaders.middleware.CorsMiddleware",  # preflights
)

#: The hint for every position check.
RECOMMENDED_POSITION: Final = (
    "Put 'freeplay_integrations.django.FreeplaySessionMiddleware' near the top of "
    "MIDDLEWARE, right after 'django.middleware.security.SecurityMiddleware' (and "
    "UpdateCacheMiddleware or GZipMiddleware if you use them); or, when SESSION_METADATA "
    "or AUTHORIZE_SESSION reads request.user, right after "
    "'django.contrib.auth.middleware.AuthenticationMiddleware'."
)
AUTHENTICATION_MIDDLEWARE: Final = "django.contrib.auth.middleware.AuthenticationMiddleware"
CORS_MIDDLEWARE: Final = "corsheaders.middleware.CorsMiddleware"

_OPTION_IDS: Final = {
    "client": "freeplay_integrations.E001",
    "api_key": "freeplay_integrations.E001",
    "api_base": "freeplay_integrations.E001",
    "project_id": "freeplay_integrations.E002",
    "on_invalid": "freeplay_integrations.E004",
    "on_unauthorized": "freeplay_integrations.E004",
    "cookie_samesite": "freeplay_integrations.E005",
}
_HINTS: Final = {
    "freeplay_integrations.E001": (
        'Set FREEPLAY["API_KEY"] and FREEPLAY["API_BASE"] (or the FREEPLAY_API_KEY and '
        'FREEPLAY_API_BASE environment variables), or set FREEPLAY["CLIENT"] to the dotted '
        "path of a ready freeplay.Freeplay client."
    ),
    "freeplay_integrations.E002": (
        'Set FREEPLAY["PROJECT_ID"] or the FREEPLAY_PROJECT_ID environment variable to the '
        "ID on your Freeplay project's settings page."
    ),
    "freeplay_integrations.E003": "Valid keys: " + ", ".join(conf.UPPER_OPTION_NAMES) + ".",
    "freeplay_integrations.E004": (
        'Set FREEPLAY["ON_INVALID"] (and FREEPLAY["ON_UNAUTHORIZED"]) to "new" (start a new '
        'session) or "reject" (answer 400, or 403 for a session AUTHORIZE_SESSION refused).'
    ),
    "freeplay_integrations.E005": (
        'Set FREEPLAY["COOKIE_SAMESITE"] to "lax" (the default), "strict", "none" (with '
        "Secure cookies) or None."
    ),
    "freeplay_integrations.E006": "See the configuration reference in the README.",
}


class _PlaceholderClient:
    """Stands in for a client that failed its check, so the other options still get checked."""

    sessions = None


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Every problem with `settings.FREEPLAY` (and the `FREEPLAY_*` environment variables)."""
    try:
        raw = conf.raw_setting()
    except ConfigurationError as exc:
        return [_error(str(exc), "freeplay_integrations.E006")]
    errors: list[CheckMessage] = [
        _error(conf.unknown_key_message(key, guess), "freeplay_integrations.E003")
        for key, guess in conf.unknown_keys(raw)
    ]
    options: dict[str, Any] = {}
    for key, value in raw.items():
        option = str(key).lower()
        if option not in OPTION_NAMES or key != option.upper():
            continue
        try:
            options[option] = conf.import_option(option, value)
        except ConfigurationError as exc:
            errors.append(_error(str(exc), _OPTION_IDS.get(option, "freeplay_integrations.E006")))
            _stand_in(options, option)

    # `Settings.from_options` stops at the first problem. Its messages name the option they
    # are about first; stand in for that option and validate again, to report them all.
    for _ in range(len(OPTION_NAMES) + 1):
        named: list[str] = []

        def name(option: str, named: list[str] = named) -> str:
            named.append(option)
            return conf.option_name(option)

        try:
            Settings.from_options(options, name=name)
        except ConfigurationError as exc:
            subject = named[0] if named else ""
            errors.append(_error(str(exc), _OPTION_IDS.get(subject, "freeplay_integrations.E006")))
            if not subject or not _stand_in(options, subject):
                break
        else:
            break
    return errors


def _stand_in(options: dict[str, Any], option: str) -> bool:
    """Replace a failed option by a valid stand-in; False if that changes nothing."""
    if option in ("client", "api_key", "api_base"):
        if isinstance(options.get("client"), _PlaceholderClient):
            return False
        for key in ("api_key", "api_base"):
            options.pop(key, None)
        options["client"] = _PlaceholderClient()
        return True
    if option == "project_id":
        if options.get("project_id") == _PLACEHOLDER_PROJECT:
            return False
        options["project_id"] = _PLACEHOLDER_PROJECT
        return True
    return options.pop(option, _MISSING) is not _MISSING


_MISSING: Final = object()
#: Stands in for a failed project ID (project IDs are UUIDs).
_PLACEHOLDER_PROJECT: Final = "00000000-0000-4000-8000-000000000000"


def _error(message: str, check_id: str) -> Error:
    return Error(message, hint=_HINTS[check_id], id=check_id)


def check_middleware(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Is `FreeplaySessionMiddleware` in `MIDDLEWARE`, in a position that keeps the session?"""
    middleware = [str(entry) for entry in getattr(settings, "MIDDLEWARE", None) or ()]
    paths = [_class_path(entry) for entry in middleware]
    position = next((i for i, path in enumerate(paths) if _is_session_middleware(path)), None)
    if position is None:
        return [
            Warning(
                "FreeplaySessionMiddleware is not in MIDDLEWARE: requests get no Freeplay "
                "session, and recordings made in views land in random sessions.",
                hint=f"Add it. {RECOMMENDED_POSITION}",
                id="freeplay_integrations.W001",
            )
        ]
    above = list(zip(middleware[:position], paths[:position], strict=True))
    auth = next((i for i, path in enumerate(paths) if path == AUTHENTICATION_MIDDLEWARE), None)
    hooks = _hooks()
    messages: list[CheckMessage] = []

    caches = [entry for entry, path in above if path in CACHE_MIDDLEWARE]
    if caches:
        messages.append(
            Error(
                f"FreeplaySessionMiddleware comes after {', '.join(caches)}: cached responses "
                "are served without passing through it, with the session cookie and header "
                "of the visitor whose response was cached. Visitors would share a session.",
                hint=f"Move it before the cache middleware. {RECOMMENDED_POSITION}",
                id="freeplay_integrations.E007",
            )
        )

    # With a hook that reads request.user, the documented place is right after
    # AuthenticationMiddleware: what comes before that is then expected above it.
    expected_above = auth if hooks and auth is not None and auth < position else 0
    responders = [
        entry
        for index, (entry, path) in enumerate(above)
        if path in RESPONDING_MIDDLEWARE and index >= expected_above
    ]
    if responders:
        messages.append(
            Warning(
                f"FreeplaySessionMiddleware comes after {', '.join(responders)}, which "
                "answer some requests (redirects, 304s, CORS preflights) or replace responses "
                "on their own: those responses do not carry the session header.",
                hint=RECOMMENDED_POSITION,
                id="freeplay_integrations.W002",
            )
        )

    if hooks and auth is not None and position < auth:
        messages.append(
            Warning(
                f"FreeplaySessionMiddleware comes before AuthenticationMiddleware, so "
                f"{' and '.join(hooks)} get(s) the request before request.user is set.",
                hint=(
                    "Move FreeplaySessionMiddleware right after "
                    "'django.contrib.auth.middleware.AuthenticationMiddleware'. If your hook "
                    "does not read request.user, add 'freeplay_integrations.W003' to "
                    "SILENCED_SYSTEM_CHECKS."
                ),
                id="freeplay_integrations.W003",
            )
        )

    cors = [entry for entry, path in above if path == CORS_MIDDLEWARE]
    exposed = getattr(settings, "CORS_EXPOSE_HEADERS", None)
    header = _header_name()
    if cors and exposed and header and header.lower() not in {str(h).lower() for h in exposed}:
        messages.append(
            Warning(
                f"{cors[0]} comes before FreeplaySessionMiddleware and sets "
                f"Access-Control-Expose-Headers from CORS_EXPOSE_HEADERS, replacing the "
                f"entry for {header}: browser code cannot read the session header.",
                hint=f'Add "{header}" to CORS_EXPOSE_HEADERS.',
                id="freeplay_integrations.W004",
            )
        )
    return messages


def _hooks() -> list[str]:
    """The request hooks configured in FREEPLAY, as written there."""
    try:
        raw = conf.raw_setting()
    except ConfigurationError:
        return []
    return [key for key in ("SESSION_METADATA", "AUTHORIZE_SESSION") if raw.get(key) is not None]


def _header_name() -> str | None:
    try:
        raw = conf.raw_setting()
    except ConfigurationError:
        return None
    header = raw.get("SESSION_HEADER", DEFAULT_SESSION_HEADER)
    return header if isinstance(header, str) else None


def _class_path(raw: object) -> str:
    """The dotted path of the class a `MIDDLEWARE` entry names (the entry if it won't import)."""
    entry = str(raw)
    if entry in MIDDLEWARE_PATHS:
        return MIDDLEWARE_PATHS[1]
    try:
        imported = import_string(entry)
    except Exception:
        return entry
    module: str = getattr(imported, "__module__", "")
    qualname: str = getattr(imported, "__qualname__", entry)
    return f"{module}.{qualname}"


def _is_session_middleware(path: str) -> bool:
    if path in MIDDLEWARE_PATHS:
        return True
    try:
        imported = import_string(path)
    except Exception:
        return False
    from .middleware import FreeplaySessionMiddleware

    return isinstance(imported, type) and issubclass(imported, FreeplaySessionMiddleware)
