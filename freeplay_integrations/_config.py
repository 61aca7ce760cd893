"""Settings shared by every adapter: one option table, read once, validated once.

`OPTIONS` is the one home of every option: its name, type, default, validator and doc
line. The keyword arguments of every adapter (`FreeplayOptions`), Flask's `app.config`
defaults, Django's `FREEPLAY` keys and system checks, Celery, httpx and the README's
configuration reference all come from it.

Each adapter turns its framework's configuration into a mapping of option names and calls
`Settings.from_options`, which runs every validator once and raises one
`ConfigurationError` listing every mistake (`Settings.check` returns them as a list, for
Django's system checks). Each message names the option the way the user writes it in that
framework (`api_key=`, `app.config["FREEPLAY_API_KEY"]`, `FREEPLAY["API_KEY"]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from ._errors import ConfigurationError
from ._ids import Signer
from ._validation import is_uuid, project_id_error

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = [
    "DEFAULT_COOKIE_MAX_AGE",
    "DEFAULT_SESSION_COOKIE",
    "DEFAULT_SESSION_HEADER",
    "ENV_API_BASE",
    "ENV_API_KEY",
    "ENV_PROJECT_ID",
    "OPTIONS",
    "OPTION_NAMES",
    "FreeplayOptions",
    "Option",
    "OptionError",
    "OptionNamer",
    "Settings",
    "build_client",
    "keyword_option",
    "resolve_project_id",
    "unknown_options",
    "validate_option",
]

DEFAULT_SESSION_HEADER = "X-Freeplay-Session-Id"
DEFAULT_SESSION_COOKIE = "freeplay_session_id"
DEFAULT_COOKIE_MAX_AGE = 30 * 24 * 60 * 60
MIN_SECRET_LENGTH = 16

ENV_API_KEY = "FREEPLAY_API_KEY"
ENV_API_BASE = "FREEPLAY_API_BASE"
ENV_PROJECT_ID = "FREEPLAY_PROJECT_ID"

Source = Literal["header", "cookie", "baggage"]
OnInvalid = Literal["new", "reject"]
RecordingMode = Literal["background", "sync"]
SameSite = Literal["lax", "strict", "none", "Lax", "Strict", "None"]
SessionMetadata = Callable[[Any], "Mapping[str, Any] | None"]
AuthorizeSession = Callable[[Any, str], bool]
SigningSecret = "str | bytes | Sequence[str | bytes]"

#: How an option is written in the user's framework, for error messages.
OptionNamer = Callable[[str], str]
#: An option's validator: the value as given, the namer; the normalised value, or raises.
Validator = Callable[[Any, OptionNamer], Any]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


class FreeplayOptions(TypedDict, total=False):
    """The options every adapter takes, as keyword arguments (`**options: Unpack[...]`).

    The same names as `OPTIONS`; a test keeps the two in step.
    """

    client: Freeplay | None
    api_key: str | None
    api_base: str | None
    project_id: str | None
    session_header: str | None
    session_cookie: str | None
    sources: Sequence[Source] | Source | None
    echo_header: bool | None
    set_cookie: bool | None
    cookie_max_age: int | timedelta
    cookie_secure: bool | None
    cookie_samesite: SameSite | None
    cookie_domain: str | None
    cookie_path: str
    signing_secret: str | bytes | Sequence[str | bytes] | None
    signed_max_age: int | timedelta | None
    on_invalid: OnInvalid
    exclude_paths: Sequence[str] | str
    session_metadata: SessionMetadata | None
    recording: RecordingMode
    authorize_session: AuthorizeSession | None
    on_unauthorized: OnInvalid


def keyword_option(name: str) -> str:
    """Option naming for the ASGI and WSGI middleware: keyword arguments."""
    return f"`{name}=`"


def deprecated_shutdown_constant(module: str) -> Callable[[str], Any]:
    """The module `__getattr__` of `module`, which still answers the old
    `SHUTDOWN_FLUSH_TIMEOUT` (10 s, a figure no shutdown used), with a DeprecationWarning,
    by the one shutdown timeout every route waits."""

    def __getattr__(name: str) -> Any:
        if name != "SHUTDOWN_FLUSH_TIMEOUT":
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        import warnings

        from ._recording import shutdown_timeout

        warnings.warn(
            f"{module}.SHUTDOWN_FLUSH_TIMEOUT is deprecated: every shutdown route (atexit, "
            "ASGI lifespan, Django's ASGI app, Celery worker shutdown) waits the one timeout "
            "set by configure_recording(shutdown_timeout=), default 5 s; this reads that value",
            DeprecationWarning,
            stacklevel=2,
        )
        return shutdown_timeout()

    return __getattr__


class OptionError(ConfigurationError):
    """One option's mistake; `option` is the option's name (lower case, as in `OPTIONS`)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option
        self.message = message


def _all_errors(errors: Sequence[OptionError]) -> ConfigurationError:
    """Every mistake `Settings.from_options` found, in one error (one line each); the
    `errors` attribute holds them one by one."""
    error = ConfigurationError("\n".join(e.message for e in errors))
    error.errors = tuple(errors)  # type: ignore[attr-defined]
    return error


# -- validators of one value each (`Option.validate`) -------------------------------------


def _pass(value: Any, name: OptionNamer) -> Any:
    return value


def _optional_str(option: str) -> Validator:
    def validate(value: Any, name: OptionNamer) -> str | None:
        if value is not None and not isinstance(value, str):
            raise ConfigurationError(f"{name(option)} must be a string, not {value!r}.")
        return value or None

    return validate


def _header_or_cookie_name(option: str) -> Validator:
    return lambda value, name: _optional_token(value, option, name)


def _optional_bool(option: str) -> Validator:
    def validate(value: Any, name: OptionNamer) -> bool | None:
        if value is not None and not isinstance(value, bool):
            raise ConfigurationError(f"{name(option)} must be True or False, not {value!r}.")
        return value

    return validate


def _one_of(option: str, choices: tuple[str, ...]) -> Validator:
    def validate(value: Any, name: OptionNamer) -> str:
        if value not in choices:
            allowed = " or ".join(repr(c) for c in choices)
            raise ConfigurationError(f"{name(option)} must be {allowed}, not {value!r}.")
        return str(value)

    return validate


def _callable(option: str, what: str) -> Validator:
    def validate(value: Any, name: OptionNamer) -> Any:
        if value is not None and not callable(value):
            raise ConfigurationError(f"{name(option)} must be {what}, not {value!r}.")
        return value

    return validate


def _client_value(value: Any, name: OptionNamer) -> Any:
    if value is not None and not hasattr(value, "sessions"):
        raise ConfigurationError(
            f"{name('client')} must be a `freeplay.Freeplay` client, not {value!r}."
        )
    return value


def _secure(value: Any, name: OptionNamer) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(
            f"{name('cookie_secure')} must be True, False or None (None: Secure when the "
            f"request came over https), not {value!r}."
        )
    return value


def _cookie_path(value: Any, name: OptionNamer) -> str:
    path = _cookie_attribute(value, "cookie_path", name)
    if not path or not path.startswith("/"):
        raise ConfigurationError(f"{name('cookie_path')} must start with '/', not {path!r}.")
    return path


def _signed_max_age(value: Any, name: OptionNamer) -> int | None:
    return None if value is None else _seconds(value, "signed_max_age", name)


def _sources_value(value: Any, name: OptionNamer) -> tuple[Source, ...] | None:
    if value is None:
        return None
    raw = (value,) if isinstance(value, str) else value
    sources: list[Source] = []
    for source in raw:
        if source not in ("header", "cookie", "baggage"):
            raise ConfigurationError(
                f"{name('sources')} may contain only 'header' and 'cookie' (and the opt-in "
                f"'baggage'), not {source!r}."
            )
        if source in sources:
            raise ConfigurationError(f"{name('sources')} lists {source!r} twice.")
        sources.append(source)  # type: ignore[arg-type]
    return tuple(sources)


@dataclass(frozen=True)
class Option:
    """One option: its name, type and default as documented, its validator, one doc line.

    `default` is the value used when the option is not given (and what Flask's `init_app`
    puts in `app.config`); `None` for a derived default, which `default_doc` describes.
    """

    name: str
    type: str
    default: Any
    doc: str
    validate: Validator = _pass
    default_doc: str | None = None

    @property
    def documented_default(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if isinstance(self.default, str):
            return f'`"{self.default}"`'
        return f"`{self.default!r}`"


OPTIONS: tuple[Option, ...] = (
    Option(
        "client", "freeplay.Freeplay", None,
        "A ready SDK client; without it one is built from `api_key` and `api_base`.",
        _client_value, "built from `api_key`/`api_base`",
    ),
    Option(
        "api_key", "str", None, "Freeplay API key.",
        _optional_str("api_key"), f"env `{ENV_API_KEY}`",
    ),
    Option(
        "api_base", "str (http(s) URL)", None,
        "Freeplay API base URL, e.g. `https://acme.freeplay.ai/api`.",
        _optional_str("api_base"), f"env `{ENV_API_BASE}`",
    ),
    Option(
        "project_id", "str", None, "The Freeplay project recordings go to (required).",
        _pass, f"env `{ENV_PROJECT_ID}`",
    ),
    Option(
        "session_header", "str | None", DEFAULT_SESSION_HEADER,
        "Request and response header carrying the session ID; `None`: no header.",
        _header_or_cookie_name("session_header"),
    ),
    Option(
        "session_cookie", "str | None", DEFAULT_SESSION_COOKIE,
        "Cookie carrying the session ID; `None`: no cookie.",
        _header_or_cookie_name("session_cookie"),
    ),
    Option(
        "sources", "sequence of \"header\", \"cookie\", \"baggage\"", None,
        "Where an incoming ID is looked for, in order.",
        _sources_value, "header, then cookie (those with a name)",
    ),
    Option(
        "echo_header", "bool", None, "Send the session ID back in the response header.",
        _optional_bool("echo_header"), "`True` when a header name is set",
    ),
    Option(
        "set_cookie", "bool", None, "Send the session ID back in the cookie.",
        _optional_bool("set_cookie"), "`True` when a cookie name is set",
    ),
    Option(
        "cookie_max_age", "int seconds | timedelta", DEFAULT_COOKIE_MAX_AGE,
        "The cookie's `Max-Age`.",
        lambda value, name: _seconds(value, "cookie_max_age", name), "`2592000` (30 days)",
    ),
    Option(
        "cookie_secure", "bool | None", None,
        "The cookie's `Secure`; `None`: when the request came over https.",
        _secure,
    ),
    Option(
        "cookie_samesite", "\"lax\" | \"strict\" | \"none\" | None", "lax",
        "The cookie's `SameSite`.",
        lambda value, name: _samesite(value, name),
    ),
    Option(
        "cookie_domain", "str | None", None, "The cookie's `Domain`; `None`: host-only.",
        lambda value, name: _cookie_attribute(value, "cookie_domain", name),
    ),
    Option("cookie_path", "str", "/", "The cookie's `Path`.", _cookie_path),
    Option(
        "signing_secret", "str | list[str]", None,
        "Sign IDs with HMAC-SHA256; a list rotates keys (the first signs, any verifies).",
        lambda value, name: _signer(value, name),
    ),
    Option(
        "signed_max_age", "int seconds | timedelta | None", None,
        "With `signing_secret`: refuse signed IDs older than this; `None`: no limit.",
        _signed_max_age,
    ),
    Option(
        "on_invalid", "\"new\" | \"reject\"", "new",
        "An invalid ID starts a new session, or is answered 400.",
        _one_of("on_invalid", ("new", "reject")),
    ),
    Option(
        "exclude_paths", "path prefixes", (), "Paths that get no session (health checks).",
        lambda value, name: _exclude_paths(value, name),
    ),
    Option(
        "session_metadata", "callable(request) -> dict | None", None,
        "Custom metadata for new and resumed sessions, from the request.",
        _callable(
            "session_metadata",
            "a callable that takes the request and returns a dict of custom metadata",
        ),
    ),
    Option(
        "recording", "\"background\" | \"sync\"", "background",
        "Deliver recordings in the background, or within the call.",
        _one_of("recording", ("background", "sync")),
    ),
    Option(
        "authorize_session", "callable(request, session_id) -> bool", None,
        "Asked before a valid ID is resumed; False refuses it.",
        _callable(
            "authorize_session",
            "a callable that takes the request and the session ID and returns True to allow "
            "resuming it",
        ),
    ),
    Option(
        "on_unauthorized", "\"new\" | \"reject\"", "new",
        "A refused session starts a new one, or is answered 403.",
        _one_of("on_unauthorized", ("new", "reject")),
    ),
)  # fmt: skip

#: The option names, in the table's order.
OPTION_NAMES: tuple[str, ...] = tuple(option.name for option in OPTIONS)
_BY_NAME: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def unknown_options(
    options: Iterable[str], name: OptionNamer = keyword_option
) -> OptionError | None:
    """The error for the names in `options` that are not options, or None."""
    unknown = sorted(set(options) - set(OPTION_NAMES))
    if not unknown:
        return None
    return OptionError(
        "",
        f"Unknown freeplay_integrations option(s): {', '.join(map(name, unknown))}. "
        f"Valid options: {', '.join(OPTION_NAMES)}.",
    )


def validate_option(option: str, value: Any, name: OptionNamer = keyword_option) -> Any:
    """`value` normalised by option `option`'s validator; raises `ConfigurationError`."""
    return _BY_NAME[option].validate(value, name)


class Settings:
    """The validated, normalised configuration of one middleware or extension."""

    __slots__ = (
        "authorize_session",
        "client",
        "cookie_domain",
        "cookie_max_age",
        "cookie_name",
        "cookie_path",
        "cookie_samesite",
        "cookie_secure",
        "echo_header",
        "exclude_paths",
        "header_name",
        "on_invalid",
        "on_unauthorized",
        "project_id",
        "recording",
        "session_metadata",
        "set_cookie",
        "signer",
        "sources",
    )

    client: Freeplay
    project_id: str
    header_name: str | None
    cookie_name: str | None
    sources: tuple[Source, ...]
    echo_header: bool
    set_cookie: bool
    cookie_max_age: int
    cookie_secure: bool | None
    cookie_samesite: str | None
    cookie_domain: str | None
    cookie_path: str
    signer: Signer | None
    on_invalid: OnInvalid
    exclude_paths: tuple[str, ...]
    session_metadata: SessionMetadata | None
    recording: RecordingMode
    authorize_session: AuthorizeSession | None
    on_unauthorized: OnInvalid

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, Any],
        *,
        name: OptionNamer = keyword_option,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Validate `options` (a subset of `OPTION_NAMES`) and fill in defaults.

        `environ` defaults to `os.environ`; it supplies `FREEPLAY_API_KEY`,
        `FREEPLAY_API_BASE` and `FREEPLAY_PROJECT_ID` when the options do not. Raises one
        `ConfigurationError` naming every mistake (one per line).
        """
        settings, errors = cls._build(options, name, environ)
        if errors:
            raise _all_errors(errors)
        assert settings is not None
        return settings

    @classmethod
    def check(
        cls,
        options: Mapping[str, Any],
        *,
        name: OptionNamer = keyword_option,
        environ: Mapping[str, str] | None = None,
    ) -> list[OptionError]:
        """Every mistake in `options`, each validator run once (for Django's checks)."""
        return cls._build(options, name, environ)[1]

    @classmethod
    def _build(
        cls,
        options: Mapping[str, Any],
        name: OptionNamer,
        environ: Mapping[str, str] | None,
    ) -> tuple[Settings | None, list[OptionError]]:
        env = os.environ if environ is None else environ
        errors: list[OptionError] = []
        unknown = unknown_options(options, name)
        if unknown is not None:
            errors.append(unknown)
        values: dict[str, Any] = {}
        for option in OPTIONS:
            given = options.get(option.name, option.default)
            try:
                values[option.name] = option.validate(given, name)
            except ConfigurationError as exc:
                errors.append(OptionError(option.name, str(exc)))
                values[option.name] = _FAILED

        def check(option: str, rule: Callable[[], Any]) -> Any:
            try:
                return rule()
            except ConfigurationError as exc:
                errors.append(OptionError(option, str(exc)))
                return _FAILED

        self = cls.__new__(cls)
        if _FAILED in (values["client"], values["api_key"], values["api_base"]):
            client = _FAILED
        else:
            client = check("client", lambda: _client(values, env, name))
        project_id = check("project_id", lambda: _project_id(options, env, name))
        header, cookie = values["session_header"], values["session_cookie"]
        sources = values["sources"]
        if header is not _FAILED and cookie is not _FAILED and sources is not _FAILED:
            sources = check("sources", lambda: _sources(sources, header, cookie, name))
        echo = values["echo_header"]
        if header is not _FAILED and echo is not _FAILED:
            echo = check("echo_header", lambda: _needs(echo, header, "echo_header", name))
        set_cookie = values["set_cookie"]
        if cookie is not _FAILED and set_cookie is not _FAILED:
            set_cookie = check("set_cookie", lambda: _needs(set_cookie, cookie, "set_cookie", name))
        if values["cookie_samesite"] == "None" and values["cookie_secure"] is False:
            errors.append(
                OptionError(
                    "cookie_samesite",
                    f"{name('cookie_samesite')} is 'none' but {name('cookie_secure')} is "
                    "False: browsers drop SameSite=None cookies that are not Secure. Set "
                    "cookie_secure to True (or None), or use samesite 'lax'.",
                )
            )
        signer = values["signing_secret"]
        max_age = values["signed_max_age"]
        if signer is not None and signer is not _FAILED and max_age not in (None, _FAILED):
            signer = Signer(signer.secrets, max_age=max_age)
        if errors:
            return None, errors
        self.client = client
        self.project_id = project_id
        self.header_name = header
        self.cookie_name = cookie
        self.sources = sources
        self.echo_header = echo
        self.set_cookie = set_cookie
        self.cookie_max_age = values["cookie_max_age"]
        self.cookie_secure = values["cookie_secure"]
        self.cookie_samesite = values["cookie_samesite"]
        self.cookie_domain = values["cookie_domain"]
        self.cookie_path = values["cookie_path"]
        self.signer = signer
        self.on_invalid = values["on_invalid"]
        self.exclude_paths = values["exclude_paths"]
        self.session_metadata = values["session_metadata"]
        self.recording = values["recording"]
        self.authorize_session = values["authorize_session"]
        self.on_unauthorized = values["on_unauthorized"]
        return self, []

    def __repr__(self) -> str:
        return (
            f"<Settings project_id={self.project_id!r} header={self.header_name!r} "
            f"cookie={self.cookie_name!r} sources={self.sources!r}>"
        )


_FAILED: Any = object()


def _needs(value: bool | None, name_value: str | None, option: str, name: OptionNamer) -> bool:
    """`echo_header` / `set_cookie`: on by default when there is a name to send."""
    if value is None:
        return name_value is not None
    if value and name_value is None:
        what, target = (
            ("header", "session_header")
            if option == "echo_header"
            else ("cookie", "session_cookie")
        )
        raise ConfigurationError(
            f"{name(option)} is on but {name(target)} is None: "
            f"set a {what} name or turn {option} off."
        )
    return value


def build_client(
    *,
    client: Freeplay | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    name: OptionNamer = keyword_option,
    environ: Mapping[str, str] | None = None,
) -> Freeplay:
    """The client the options describe: `client`, or one built from the key and base URL
    (falling back to `FREEPLAY_API_KEY` / `FREEPLAY_API_BASE`). For Celery and the like."""
    options = {"client": client, "api_key": api_key, "api_base": api_base}
    for option, value in options.items():
        _BY_NAME[option].validate(value, name)
    return _client(options, os.environ if environ is None else environ, name)


def resolve_project_id(
    project_id: str | None,
    *,
    required: bool = True,
    name: OptionNamer = keyword_option,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """`project_id`, or `FREEPLAY_PROJECT_ID`; None when neither is set and not `required`."""
    env = os.environ if environ is None else environ
    if not required and project_id is None and not env.get(ENV_PROJECT_ID):
        return None
    return _project_id({"project_id": project_id}, env, name)


def _client(options: Mapping[str, Any], env: Mapping[str, str], name: OptionNamer) -> Freeplay:
    client = options.get("client")
    if client is not None:
        if options.get("api_key") is not None or options.get("api_base") is not None:
            raise ConfigurationError(
                f"Pass either {name('client')} or {name('api_key')}/{name('api_base')}, not both."
            )
        return client  # type: ignore[no-any-return]
    api_key = options.get("api_key") or env.get(ENV_API_KEY)
    if not api_key or not str(api_key).strip():
        raise ConfigurationError(
            f"No Freeplay API key. Set {name('api_key')} or the {ENV_API_KEY} environment "
            f"variable, or pass a ready client with {name('client')}."
        )
    api_base = options.get("api_base") or env.get(ENV_API_BASE)
    if not api_base:
        raise ConfigurationError(
            f"No Freeplay API base URL. Set {name('api_base')} or the {ENV_API_BASE} "
            "environment variable (e.g. https://acme.freeplay.ai/api, or the local server's "
            "http://127.0.0.1:8765/api), or pass a ready client with "
            f"{name('client')}."
        )
    if not isinstance(api_base, str) or not api_base.startswith(("http://", "https://")):
        raise ConfigurationError(
            f"{name('api_base')} must be an http(s) URL such as https://acme.freeplay.ai/api, "
            f"not {api_base!r}."
        )
    from freeplay import Freeplay

    return Freeplay(freeplay_api_key=str(api_key), api_base=api_base.rstrip("/"))


def _project_id(options: Mapping[str, Any], env: Mapping[str, str], name: OptionNamer) -> str:
    project_id = options.get("project_id") or env.get(ENV_PROJECT_ID)
    if not project_id or not isinstance(project_id, str) or not project_id.strip():
        raise ConfigurationError(
            f"No Freeplay project ID. Set {name('project_id')} or the {ENV_PROJECT_ID} "
            "environment variable (the project's ID is on its settings page in Freeplay)."
        )
    if "/" in project_id or any(c.isspace() for c in project_id):
        raise ConfigurationError(
            f"{name('project_id')} {project_id!r} is not a project ID: it may not contain "
            "'/' or spaces."
        )
    if not is_uuid(project_id.strip()):
        raise ConfigurationError(project_id_error(project_id, name("project_id")))
    return project_id.strip()


def _optional_token(value: Any, option: str, name: OptionNamer) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or _TOKEN.fullmatch(value) is None:
        raise ConfigurationError(
            f"{name(option)} must be a header/cookie name made of letters, digits and "
            f"!#$%&'*+-.^_`|~ (or None to turn it off), not {value!r}."
        )
    return value


def _sources(
    value: tuple[Source, ...] | None,
    header_name: str | None,
    cookie_name: str | None,
    name: OptionNamer,
) -> tuple[Source, ...]:
    """The sources in order: as given (each with a name to read), or those with a name."""
    if value is None:
        defaults: list[Source] = []
        if header_name is not None:
            defaults.append("header")
        if cookie_name is not None:
            defaults.append("cookie")
        return tuple(defaults)
    for source in value:
        if source == "header" and header_name is None:
            raise ConfigurationError(
                f"{name('sources')} includes 'header' but {name('session_header')} is None."
            )
        if source == "cookie" and cookie_name is None:
            raise ConfigurationError(
                f"{name('sources')} includes 'cookie' but {name('session_cookie')} is None."
            )
    return value


def _seconds(value: Any, option: str, name: OptionNamer) -> int:
    if isinstance(value, timedelta):
        value = int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"{name(option)} must be a number of seconds (int >= 0) or a timedelta, not {value!r}."
        )
    return value


def _samesite(value: Any, name: OptionNamer) -> str | None:
    if value is None:
        return None
    normalised = _SAMESITE.get(value.lower()) if isinstance(value, str) else None
    if normalised is None:
        raise ConfigurationError(
            f"{name('cookie_samesite')} must be 'lax', 'strict', 'none' or None, not {value!r}."
        )
    return normalised


def _cookie_attribute(value: Any, option: str, name: OptionNamer) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or any(c in value for c in ";,\r\n\t ") or not value.isascii():
        raise ConfigurationError(
            f"{name(option)} must be a plain ASCII string without ';', ',' or spaces, "
            f"not {value!r}."
        )
    return value


def _signer(value: Any, name: OptionNamer) -> Signer | None:
    if value is None:
        return None
    secrets: Sequence[Any] = [value] if isinstance(value, (str, bytes)) else value
    if not isinstance(secrets, Sequence) or not secrets:
        raise ConfigurationError(
            f"{name('signing_secret')} must be a secret string, or a list of them for key "
            f"rotation (the first signs, any verifies), not {value!r}."
        )
    for secret in secrets:
        if not isinstance(secret, (str, bytes)) or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"Each {name('signing_secret')} must be a string of at least "
                f"{MIN_SECRET_LENGTH} characters (e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`)."
            )
    return Signer(secrets)


def _exclude_paths(value: Any, name: OptionNamer) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    try:
        paths = tuple(value)
    except TypeError:
        paths = (value,)
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                f"{name('exclude_paths')} must be path prefixes starting with '/', "
                f"e.g. ['/health', '/static/'], not {path!r}."
            )
    return paths
