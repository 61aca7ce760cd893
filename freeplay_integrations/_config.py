"""Settings shared by every adapter: read once, validated once, at start-up.

Each adapter turns its framework's configuration (keyword arguments, `app.config`, Django's
`FREEPLAY` dict) into a mapping of option names and calls `Settings.from_options`. Every
mistake is a `ConfigurationError` that names the option the way the user writes it in that
framework (`api_key=`, `app.config["FREEPLAY_API_KEY"]`, `FREEPLAY["API_KEY"]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from ._errors import ConfigurationError
from ._ids import Signer
from ._validation import is_uuid, project_id_error

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = [
    "DEFAULT_COOKIE_MAX_AGE",
    "DEFAULT_SESSION_COOKIE",
    "DEFAULT_SESSION_HEADER",
    "OPTION_NAMES",
    "OptionNamer",
    "Settings",
    "keyword_option",
]

DEFAULT_SESSION_HEADER = "X-Freeplay-Session-Id"
DEFAULT_SESSION_COOKIE = "freeplay_session_id"
DEFAULT_COOKIE_MAX_AGE = 30 * 24 * 60 * 60
MIN_SECRET_LENGTH = 16

ENV_API_KEY = "FREEPLAY_API_KEY"
ENV_API_BASE = "FREEPLAY_API_BASE"
ENV_PROJECT_ID = "FREEPLAY_PROJECT_ID"

OPTION_NAMES = (
    "client",
    "api_key",
    "api_base",
    "project_id",
    "session_header",
    "session_cookie",
    "sources",
    "echo_header",
    "set_cookie",
    "cookie_max_age",
    "cookie_secure",
    "cookie_samesite",
    "cookie_domain",
    "cookie_path",
    "signing_secret",
    "on_invalid",
    "exclude_paths",
    "session_metadata",
    "recording",
    "authorize_session",
    "on_unauthorized",
)

Source = Literal["header", "cookie"]
OnInvalid = Literal["new", "reject"]
RecordingMode = Literal["background", "sync"]
SessionMetadata = Callable[[Any], "Mapping[str, Any] | None"]
AuthorizeSession = Callable[[Any, str], bool]

#: How an option is written in the user's framework, for error messages.
OptionNamer = Callable[[str], str]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


def keyword_option(name: str) -> str:
    """Option naming for the ASGI and WSGI middleware: keyword arguments."""
    return f"`{name}=`"


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
        `FREEPLAY_API_BASE` and `FREEPLAY_PROJECT_ID` when the options do not.
        """
        env = os.environ if environ is None else environ
        unknown = sorted(set(options) - set(OPTION_NAMES))
        if unknown:
            raise ConfigurationError(
                f"Unknown freeplay_integrations option(s): {', '.join(map(name, unknown))}. "
                f"Valid options: {', '.join(OPTION_NAMES)}."
            )
        self = cls.__new__(cls)
        self.client = _client(options, env, name)
        self.project_id = _project_id(options, env, name)

        self.header_name = _optional_token(
            options.get("session_header", DEFAULT_SESSION_HEADER), "session_header", name
        )
        self.cookie_name = _optional_token(
            options.get("session_cookie", DEFAULT_SESSION_COOKIE), "session_cookie", name
        )
        self.sources = _sources(options, self.header_name, self.cookie_name, name)
        self.echo_header = _bool(options, "echo_header", self.header_name is not None, name)
        if self.echo_header and self.header_name is None:
            raise ConfigurationError(
                f"{name('echo_header')} is on but {name('session_header')} is None: "
                "set a header name or turn echo_header off."
            )
        self.set_cookie = _bool(options, "set_cookie", self.cookie_name is not None, name)
        if self.set_cookie and self.cookie_name is None:
            raise ConfigurationError(
                f"{name('set_cookie')} is on but {name('session_cookie')} is None: "
                "set a cookie name or turn set_cookie off."
            )
        self.cookie_max_age = _max_age(options.get("cookie_max_age", DEFAULT_COOKIE_MAX_AGE), name)
        secure = options.get("cookie_secure")
        if secure is not None and not isinstance(secure, bool):
            raise ConfigurationError(
                f"{name('cookie_secure')} must be True, False or None (None: Secure when the "
                f"request came over https), not {secure!r}."
            )
        self.cookie_secure = secure
        self.cookie_samesite = _samesite(options.get("cookie_samesite", "lax"), name)
        if self.cookie_samesite == "None" and self.cookie_secure is False:
            raise ConfigurationError(
                f"{name('cookie_samesite')} is 'none' but {name('cookie_secure')} is False: "
                "browsers drop SameSite=None cookies that are not Secure. Set cookie_secure "
                "to True (or None), or use samesite 'lax'."
            )
        self.cookie_domain = _cookie_attribute(options.get("cookie_domain"), "cookie_domain", name)
        path = _cookie_attribute(options.get("cookie_path", "/"), "cookie_path", name)
        if not path or not path.startswith("/"):
            raise ConfigurationError(f"{name('cookie_path')} must start with '/', not {path!r}.")
        self.cookie_path = path
        self.signer = _signer(options.get("signing_secret"), name)
        self.on_invalid = _choice(options, "on_invalid", ("new", "reject"), "new", name)  # type: ignore[assignment]
        self.exclude_paths = _exclude_paths(options.get("exclude_paths", ()), name)
        metadata = options.get("session_metadata")
        if metadata is not None and not callable(metadata):
            raise ConfigurationError(
                f"{name('session_metadata')} must be a callable that takes the request and "
                f"returns a dict of custom metadata, not {metadata!r}."
            )
        self.session_metadata = metadata
        self.recording = _choice(  # type: ignore[assignment]
            options, "recording", ("background", "sync"), "background", name
        )
        authorize = options.get("authorize_session")
        if authorize is not None and not callable(authorize):
            raise ConfigurationError(
                f"{name('authorize_session')} must be a callable that takes the request and "
                f"the session ID and returns True to allow resuming it, not {authorize!r}."
            )
        self.authorize_session = authorize
        self.on_unauthorized = _choice(  # type: ignore[assignment]
            options, "on_unauthorized", ("new", "reject"), "new", name
        )
        return self

    def __repr__(self) -> str:
        return (
            f"<Settings project_id={self.project_id!r} header={self.header_name!r} "
            f"cookie={self.cookie_name!r} sources={self.sources!r}>"
        )


def _client(options: Mapping[str, Any], env: Mapping[str, str], name: OptionNamer) -> Freeplay:
    client = options.get("client")
    if client is not None:
        if options.get("api_key") is not None or options.get("api_base") is not None:
            raise ConfigurationError(
                f"Pass either {name('client')} or {name('api_key')}/{name('api_base')}, not both."
            )
        if not hasattr(client, "sessions"):
            raise ConfigurationError(
                f"{name('client')} must be a `freeplay.Freeplay` client, not {client!r}."
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
    options: Mapping[str, Any],
    header_name: str | None,
    cookie_name: str | None,
    name: OptionNamer,
) -> tuple[Source, ...]:
    if "sources" not in options or options["sources"] is None:
        defaults: list[Source] = []
        if header_name is not None:
            defaults.append("header")
        if cookie_name is not None:
            defaults.append("cookie")
        return tuple(defaults)
    raw = options["sources"]
    if isinstance(raw, str):
        raw = (raw,)
    sources: list[Source] = []
    for source in raw:
        if source not in ("header", "cookie"):
            raise ConfigurationError(
                f"{name('sources')} may contain only 'header' and 'cookie', not {source!r}."
            )
        if source in sources:
            raise ConfigurationError(f"{name('sources')} lists {source!r} twice.")
        if source == "header" and header_name is None:
            raise ConfigurationError(
                f"{name('sources')} includes 'header' but {name('session_header')} is None."
            )
        if source == "cookie" and cookie_name is None:
            raise ConfigurationError(
                f"{name('sources')} includes 'cookie' but {name('session_cookie')} is None."
            )
        sources.append(source)
    return tuple(sources)


def _bool(options: Mapping[str, Any], option: str, default: bool, name: OptionNamer) -> bool:
    value = options.get(option)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name(option)} must be True or False, not {value!r}.")
    return value


def _max_age(value: Any, name: OptionNamer) -> int:
    if isinstance(value, timedelta):
        value = int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"{name('cookie_max_age')} must be a number of seconds (int >= 0) or a timedelta, "
            f"not {value!r}."
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


def _choice(
    options: Mapping[str, Any],
    option: str,
    choices: tuple[str, ...],
    default: str,
    name: OptionNamer,
) -> str:
    value = options.get(option, default)
    if value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        raise ConfigurationError(f"{name(option)} must be {allowed}, not {value!r}.")
    return str(value)


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
