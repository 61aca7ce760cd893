"""The `FREEPLAY` settings dict, read lazily and validated once.

Keys are the option names of the README's configuration reference, upper-cased::

    FREEPLAY = {
        "PROJECT_ID": "...",
        "API_KEY": env("FREEPLAY_API_KEY"),      # or CLIENT, or the environment variables
        "CLIENT": "myproject.freeplay.client",   # dotted path to a ready `Freeplay` client
        "SESSION_METADATA": "myproject.freeplay.session_metadata",  # dotted path or callable
        "AUTHORIZE_SESSION": "myproject.freeplay.owns_session",     # dotted path or callable
    }

Nothing is read at import. The first use builds the validated `Settings` (and the
`SessionResolver` every request goes through) and keeps them until the `FREEPLAY` setting
changes (`override_settings`, pytest-django's `settings` fixture), when they are built again
at the next use.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from .._config import OPTION_NAMES, Settings
from .._errors import ConfigurationError
from .._web import SessionResolver
from .cookies import MorselMaker
from .headers import HeaderWriter

if TYPE_CHECKING:
    from django.http import HttpRequest

__all__ = [
    "IMPORTABLE_OPTIONS",
    "SETTING_NAME",
    "UPPER_OPTION_NAMES",
    "DjangoConfig",
    "get_config",
    "import_option",
    "load_settings",
    "option_name",
    "raw_setting",
    "unknown_key_message",
    "unknown_keys",
    "user_options",
]

#: The Django setting that holds the options.
SETTING_NAME = "FREEPLAY"
#: The keys `FREEPLAY` may contain.
UPPER_OPTION_NAMES = tuple(name.upper() for name in OPTION_NAMES)
#: Options that may be given as a dotted path to the object, Django style.
IMPORTABLE_OPTIONS = ("client", "session_metadata", "authorize_session")


def option_name(option: str) -> str:
    """How an option is written in Django settings, for error messages: `FREEPLAY["API_KEY"]`."""
    return f'{SETTING_NAME}["{option.upper()}"]'


def raw_setting() -> Mapping[str, Any]:
    """`settings.FREEPLAY` as written (`{}` when it is not set)."""
    raw = getattr(settings, SETTING_NAME, None)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError(
            f"settings.{SETTING_NAME} must be a dict such as "
            f'{{"PROJECT_ID": "...", "API_KEY": "..."}}, not {type(raw).__name__}.'
        )
    return raw


def unknown_keys(raw: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """`(key, closest valid key or None)` for each key of `raw` that is not an option."""
    unknown = []
    for key in raw:
        if key not in UPPER_OPTION_NAMES:
            guess = difflib.get_close_matches(str(key).upper(), UPPER_OPTION_NAMES, n=1)
            unknown.append((str(key), guess[0] if guess else None))
    return unknown


def unknown_key_message(key: str, guess: str | None) -> str:
    hint = f' Did you mean "{guess}"?' if guess else ""
    return f'Unknown key "{key}" in settings.{SETTING_NAME}.{hint}'


def import_option(option: str, value: Any) -> Any:
    """`value` with a dotted path imported (`CLIENT`, `SESSION_METADATA`) and a `CLIENT`
    factory called. Raises `ConfigurationError` saying what to set."""
    if option not in IMPORTABLE_OPTIONS:
        return value
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as exc:
            what = {
                "client": "a `freeplay.Freeplay` client (or a function that returns one)",
                "session_metadata": "a function that takes the request and returns a dict",
                "authorize_session": (
                    "a function that takes the request and the session ID and returns a bool"
                ),
            }[option]
            raise ConfigurationError(
                f"{option_name(option)} = {value!r} could not be imported ({exc}). Set it to "
                f"the dotted path of {what}, e.g. 'myproject.freeplay.{option}'."
            ) from exc
    if option == "client" and callable(value) and not hasattr(value, "sessions"):
        try:
            value = value()
        except Exception as exc:
            raise ConfigurationError(
                f"{option_name('client')}: calling {value!r} to build the Freeplay client "
                f"raised {type(exc).__name__}: {exc}"
            ) from exc
    return value


def user_options() -> dict[str, Any]:
    """`settings.FREEPLAY` as `Settings.from_options` options: lower-case names, dotted
    paths imported. Raises `ConfigurationError` for unknown keys and paths that do not import.
    """
    raw = raw_setting()
    unknown = unknown_keys(raw)
    if unknown:
        messages = " ".join(unknown_key_message(key, guess) for key, guess in unknown)
        raise ConfigurationError(f"{messages} Valid keys: {', '.join(UPPER_OPTION_NAMES)}.")
    return {key.lower(): import_option(key.lower(), value) for key, value in raw.items()}


def load_settings() -> Settings:
    """Read and validate `settings.FREEPLAY` now. Raises `ConfigurationError`."""
    return Settings.from_options(user_options(), name=option_name)


class DjangoConfig:
    """Validated settings, the resolver every request goes through, the writer of the
    session headers and the maker of the session cookie's `Morsel`, built once."""

    __slots__ = ("behind_proxy", "morsel", "resolver", "settings", "write_headers")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.resolver = SessionResolver(settings)
        self.write_headers = HeaderWriter(self.resolver)
        self.morsel = MorselMaker()
        #: Django's `SECURE_PROXY_SSL_HEADER` is set: `is_secure` asks `request.scheme`.
        self.behind_proxy = _behind_proxy()

    def is_secure(self, request: HttpRequest) -> bool:
        """`request.is_secure()`. Without `SECURE_PROXY_SSL_HEADER`, Django's `scheme` is
        `_get_scheme()` (the WSGI environ's, or the ASGI scope's): asked directly, it
        skips reading the setting through the lazy `settings` object (about 1 µs)."""
        if self.behind_proxy:
            return request.scheme == "https"
        return request._get_scheme() == "https"  # type: ignore[attr-defined,no-any-return]


def _behind_proxy() -> bool:
    return bool(settings.SECURE_PROXY_SSL_HEADER)


_config: DjangoConfig | None = None


def get_config() -> DjangoConfig:
    """The current configuration; built at the first call after start-up or a change.

    Raises `ImproperlyConfigured` (with the message saying what to set) when `FREEPLAY` is
    missing something or malformed.
    """
    global _config
    config = _config
    if config is None:
        try:
            config = DjangoConfig(load_settings())
        except ConfigurationError as exc:
            raise ImproperlyConfigured(str(exc)) from exc
        _config = config
    return config


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _config
    if setting in (SETTING_NAME, "SECURE_PROXY_SSL_HEADER"):
        _config = None


# Only `override_settings` (tests) sends `setting_changed`. Connected once, when this module
# is first imported; the dispatch UID keeps it to one receiver whatever happens.
setting_changed.connect(_reset, dispatch_uid="freeplay_integrations.django.conf")
