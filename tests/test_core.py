"""The framework-free core: ID validation, signing, settings, the contextvar and scopes."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import subprocess
import sys
import textwrap
import uuid
from datetime import timedelta
from typing import Any

import pytest
from freeplay import Freeplay

from freeplay_integrations import (
    ConfigurationError,
    NoActiveSessionError,
    current_session,
    new_session,
    require_session,
    session_scope,
)
from freeplay_integrations._config import Settings
from freeplay_integrations._ids import MAX_ID_LENGTH, Signer, parse_session_id
from freeplay_integrations._web import (
    KNOWN_VALUES,
    SERVER_ERROR,
    Rejection,
    SessionResolver,
    cookie_value,
)
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID

API_BASE = "http://127.0.0.1:9/api"  # never contacted: creating sessions makes no HTTP call


@pytest.fixture
def client() -> Freeplay:
    return Freeplay(freeplay_api_key="test-key", api_base=API_BASE)


def settings(client: Freeplay, **options: Any) -> Settings:
    options = {"client": client, "project_id": PROJECT_ID, **options}
    return Settings.from_options(options, environ={})


# --- IDs -------------------------------------------------------------------------------


def test_parse_session_id_accepts_uuid4_in_any_case() -> None:
    value = str(uuid.uuid4())
    assert parse_session_id(value) == value
    assert parse_session_id(value.upper()) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        str(uuid.uuid1()),
        str(uuid.uuid3(uuid.NAMESPACE_DNS, "x")),
        str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")),
        uuid.uuid4().hex,  # no hyphens
        "{" + str(uuid.uuid4()) + "}",
        "urn:uuid:" + str(uuid.uuid4()),
        str(uuid.uuid4()) + "\r\nSet-Cookie: x=1",
        " " + str(uuid.uuid4()),
        "\u0430" + str(uuid.uuid4())[1:],  # Cyrillic lookalike of a hex digit
        "x" * 10_000,
    ],
)
def test_parse_session_id_rejects_everything_else(value: str) -> None:
    assert parse_session_id(value) is None


def test_parse_session_id_caps_length_before_parsing() -> None:
    # A valid ID padded past the cap is refused without being parsed.
    assert parse_session_id(str(uuid.uuid4()) + " " * MAX_ID_LENGTH) is None


def test_signer_round_trip_and_rotation() -> None:
    old, new = "o" * 32, "n" * 32
    session_id = str(uuid.uuid4())
    token = Signer([old]).sign(session_id)
    assert token.startswith(session_id + ".")
    rotated = Signer([new, old])
    assert rotated.unsign(token) == session_id  # still accepted after rotation
    assert rotated.sign(session_id) == Signer([new]).sign(session_id)  # signed with the first
    assert Signer([new]).unsign(token) is None  # old secret dropped: refused


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.split(".")[0],  # unsigned
        lambda t: t[:-1],  # truncated signature
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # wrong signature
        lambda t: str(uuid.uuid4()) + "." + t.split(".")[1],  # signature of another ID
        lambda t: t + "x",
        lambda t: t.replace(".", ".\u00e9"),
    ],
)
def test_signer_refuses_tampered_tokens(mangle: Any) -> None:
    signer = Signer(["s" * 32])
    token = signer.sign(str(uuid.uuid4()))
    assert signer.unsign(mangle(token)) is None


# --- Settings --------------------------------------------------------------------------


def test_settings_defaults(client: Freeplay) -> None:
    s = settings(client)
    assert s.header_name == "X-Freeplay-Session-Id"
    assert s.cookie_name == "freeplay_session_id"
    assert s.sources == ("header", "cookie")
    assert (s.echo_header, s.set_cookie) == (True, True)
    assert s.cookie_max_age == 30 * 24 * 3600
    assert s.cookie_samesite == "Lax"
    assert (s.on_invalid, s.recording) == ("new", "background")


def test_settings_build_a_client_from_the_environment() -> None:
    s = Settings.from_options(
        {},
        environ={
            "FREEPLAY_API_KEY": "k",
            "FREEPLAY_API_BASE": "http://127.0.0.1:9/api/",
            "FREEPLAY_PROJECT_ID": "5e0c3c8a-3b7e-4f0e-9a51-2c4d6e8f0a1b",
        },
    )
    assert isinstance(s.client, Freeplay)
    assert s.client.api_base == "http://127.0.0.1:9/api"
    assert s.project_id == "5e0c3c8a-3b7e-4f0e-9a51-2c4d6e8f0a1b"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"project_id": PROJECT_ID}, "FREEPLAY_API_KEY"),
        ({"project_id": PROJECT_ID, "api_key": "k"}, "FREEPLAY_API_BASE"),
        ({"project_id": PROJECT_ID, "api_key": "k", "api_base": "ftp://x"}, "http(s) URL"),
        ({"api_key": "k", "api_base": "http://x"}, "FREEPLAY_PROJECT_ID"),
    ],
)
def test_settings_say_what_to_set(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_options(options, environ={})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_invalid": "ignore"}, "`on_invalid=` must be 'new' or 'reject'"),
        ({"cookie_samesite": "loose"}, "`cookie_samesite=` must be 'lax'"),
        ({"cookie_samesite": "none", "cookie_secure": False}, "SameSite=None"),
        ({"recording": "later"}, "`recording=` must be 'background' or 'sync'"),
        ({"sources": ["query"]}, "may contain only 'header' and 'cookie'"),
        ({"session_header": "X Bad"}, "`session_header=` must be a header/cookie name"),
        ({"cookie_max_age": -1}, "`cookie_max_age=` must be a number of seconds"),
        ({"signing_secret": "short"}, "at least 16 characters"),
        ({"exclude_paths": ["health"]}, "starting with '/'"),
        ({"session_metadata": "user_id"}, "must be a callable"),
        ({"sesion_header": "X-A"}, r"Unknown freeplay_integrations option\(s\): `sesion_header=`"),
        ({"session_cookie": None, "set_cookie": True}, "`session_cookie=` is None"),
        ({"api_key": "k"}, "either `client=` or `api_key=`"),
    ],
)
def test_settings_reject_malformed_options(
    client: Freeplay, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings(client, **options)


def test_settings_accept_a_timedelta_and_a_single_exclude_path(client: Freeplay) -> None:
    s = settings(client, cookie_max_age=timedelta(hours=1), exclude_paths="/health")
    assert s.cookie_max_age == 3600
    assert s.exclude_paths == ("/health",)


def test_no_cookie_name_drops_the_cookie_source_and_the_cookie(client: Freeplay) -> None:
    s = settings(client, session_cookie=None)
    assert s.sources == ("header",)
    assert s.set_cookie is False


# --- Resolution ------------------------------------------------------------------------


def test_resolver_prefers_the_first_configured_source(client: Freeplay) -> None:
    in_header, in_cookie = str(uuid.uuid4()), str(uuid.uuid4())
    cookie = f"a=1; freeplay_session_id={in_cookie}"
    header_first = SessionResolver(settings(client)).resolve(in_header, cookie, None)
    cookie_first = SessionResolver(settings(client, sources=["cookie", "header"])).resolve(
        in_header, cookie, None
    )
    assert not isinstance(header_first, Rejection)
    assert not isinstance(cookie_first, Rejection)
    assert header_first.session_id == in_header
    assert cookie_first.session_id == in_cookie


def test_resolver_starts_a_new_session_for_an_invalid_id(client: Freeplay) -> None:
    binding = SessionResolver(settings(client)).resolve("nope", None, None)
    assert not isinstance(binding, Rejection)
    assert parse_session_id(binding.session_id) == binding.session_id
    assert binding.session_id != "nope"


def test_resolver_rejects_an_invalid_id_when_configured(client: Freeplay) -> None:
    result = SessionResolver(settings(client, on_invalid="reject")).resolve(
        None, "freeplay_session_id=zz", None
    )
    assert isinstance(result, Rejection)
    assert result.status == 400
    assert result.source == "cookie"
    assert b"zz" not in result.body


def test_session_headers_are_the_expose_the_echo_and_the_cookie_in_each_form(
    client: Freeplay,
) -> None:
    resolver = SessionResolver(settings(client))
    token = str(uuid.uuid4())
    headers = resolver.session_headers(token, False)
    assert [name for name, _ in headers] == [
        "Access-Control-Expose-Headers",
        "X-Freeplay-Session-Id",
        "Set-Cookie",
    ]
    assert headers[0][1] == "X-Freeplay-Session-Id" and headers[1][1] == token
    assert headers[2][1].startswith(f"freeplay_session_id={token}; Max-Age=")
    assert "Secure" not in headers[2][1]
    assert resolver.session_headers(token, True)[2][1].endswith("; Secure")
    raw = resolver.session_headers(token, False, raw=True)
    assert raw == tuple((name.lower().encode(), value.encode("latin-1")) for name, value in headers)
    ended = resolver.session_headers(None, False)
    assert len(ended) == 1 and ended[0][0] == "Set-Cookie"
    assert ended[0][1].startswith("freeplay_session_id=; Max-Age=0; Expires=Thu, 01 Jan 1970")
    expiry = ((b"set-cookie", ended[0][1].encode()),)
    assert resolver.session_headers(None, False, raw=True) == expiry


def test_session_headers_follow_the_echo_and_cookie_options(client: Freeplay) -> None:
    token = str(uuid.uuid4())
    no_echo = SessionResolver(settings(client, echo_header=False))
    assert [name for name, _ in no_echo.session_headers(token, False)] == ["Set-Cookie"]
    no_cookie = SessionResolver(settings(client, set_cookie=False))
    assert [name for name, _ in no_cookie.session_headers(token, False)] == [
        "Access-Control-Expose-Headers",
        "X-Freeplay-Session-Id",
    ]
    assert no_cookie.session_headers(None, False) == ()
    neither = SessionResolver(settings(client, echo_header=False, set_cookie=False))
    assert neither.session_headers(token, False) == ()


def test_session_headers_are_kept_for_returning_clients_only_and_bounded(
    client: Freeplay,
) -> None:
    resolver = SessionResolver(settings(client))
    new = resolver.resolve(None, None, None)
    assert not isinstance(new, Rejection)
    resolver.session_headers(new.token, False)
    resolver.session_headers(new.token, False, raw=True)
    assert resolver.built_headers[False] == {} and resolver.built_raw_headers[False] == {}
    returning = str(uuid.uuid4())
    assert resolver.parse(returning) == returning
    text = resolver.session_headers(returning, False)
    raw = resolver.session_headers(returning, True, raw=True)
    assert resolver.built_headers[False] == {returning: text}
    assert resolver.built_raw_headers[True] == {returning: raw}
    for _ in range(KNOWN_VALUES + 10):
        token = str(uuid.uuid4())
        resolver.parse(token)
        resolver.session_headers(token, False)
    assert 0 < len(resolver.built_headers[False]) <= KNOWN_VALUES


def test_the_server_error_answer_in_each_form() -> None:
    assert SERVER_ERROR.status_line == "500 Internal Server Error"
    assert SERVER_ERROR.body == b"Internal Server Error"
    assert dict(SERVER_ERROR.headers)["Content-Length"] == str(len(SERVER_ERROR.body))
    assert SERVER_ERROR.raw_headers == (
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"21"),
    )


def test_cookie_value_parsing() -> None:
    assert cookie_value('a=1; freeplay_session_id="abc"; b=2', "freeplay_session_id") == "abc"
    assert cookie_value("xfreeplay_session_id=1", "freeplay_session_id") is None
    assert (
        cookie_value("freeplay_session_id=1; freeplay_session_id=2", "freeplay_session_id") == "1"
    )
    assert cookie_value(";;;=;freeplay_session_id", "freeplay_session_id") is None


def test_session_metadata_failures_do_not_fail_the_request(client: Freeplay) -> None:
    def broken(request: object) -> dict[str, str]:
        raise RuntimeError("boom")

    binding = SessionResolver(settings(client, session_metadata=broken)).resolve(None, None, None)
    assert not isinstance(binding, Rejection)
    assert binding.session.custom_metadata is None


# --- Context ---------------------------------------------------------------------------


def test_require_session_outside_a_session_says_how_to_bind_one() -> None:
    assert current_session() is None
    with pytest.raises(NoActiveSessionError, match="session_scope"):
        require_session()
    with pytest.raises(NoActiveSessionError):
        new_session()


def test_session_scope_nests_and_restores(client: Freeplay) -> None:
    outer_id = str(uuid.uuid4())
    with session_scope(client, outer_id, custom_metadata={"user": "u1"}) as outer:
        assert outer.session_id == outer_id
        assert require_session() is outer
        with session_scope(client) as inner:
            assert current_session() is inner
            assert inner.session_id != outer_id
        assert current_session() is outer
        replaced = new_session()
        assert current_session() is replaced
        assert replaced.custom_metadata == {"user": "u1"}  # metadata carries over
    assert current_session() is None


def test_session_scope_refuses_an_invalid_id(client: Freeplay) -> None:
    with pytest.raises(ValueError, match="not a UUID v4"):
        session_scope(client, "123")


@pytest.mark.anyio
async def test_session_scope_async_is_task_local(client: Freeplay) -> None:
    seen: dict[str, str | None] = {}

    async def worker(name: str) -> None:
        async with session_scope(client) as session:
            await asyncio.sleep(0.01)
            current = current_session()
            seen[name] = current.session_id if current is not None else None
            assert current is session

    await asyncio.gather(*(worker(str(i)) for i in range(20)))
    assert len(set(seen.values())) == 20
    assert current_session() is None


# --- Import hygiene --------------------------------------------------------------------

_BLOCK_FRAMEWORKS = textwrap.dedent(
    """
    import sys, importlib.abc

    BLOCKED = {"starlette", "fastapi", "django", "flask", "werkzeug", "httpx", "celery", "anyio"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    """
)


def test_core_imports_without_any_web_framework() -> None:
    code = _BLOCK_FRAMEWORKS + textwrap.dedent(
        """
        import freeplay_integrations as fi
        from freeplay import Freeplay
        client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
        with fi.session_scope(client) as s:
            assert fi.current_session() is s
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_asgi_middleware_works_without_starlette() -> None:
    """Quart and Litestar users: `freeplay_integrations.asgi` imports no Starlette, and a
    pure ASGI app gets its session, the header and the cookie; the hooks get the scope."""
    code = _BLOCK_FRAMEWORKS + textwrap.dedent(
        """
        import asyncio
        import freeplay_integrations as fi
        from freeplay import Freeplay
        from freeplay_integrations.asgi import FreeplaySessionMiddleware

        async def app(scope, receive, send):
            body = fi.require_session().session_id.encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})

        seen = []
        client = Freeplay(freeplay_api_key="k", api_base="http://127.0.0.1:9/api")
        wrapped = FreeplaySessionMiddleware(
            app, client=client, project_id="8c6f3e2a-1d4b-4f7a-9b2e-5a0c7d1e3f64",
            session_metadata=lambda request: seen.append(type(request).__name__) or None,
        )
        sent = []

        async def receive():
            return {"type": "http.request", "body": b""}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "path": "/", "headers": [], "scheme": "http"}
        asyncio.run(wrapped(scope, receive, send))
        headers = dict(sent[0]["headers"])
        assert headers[b"x-freeplay-session-id"] == sent[1]["body"], sent
        assert headers[b"set-cookie"].startswith(b"freeplay_session_id=" + sent[1]["body"])
        assert seen == ["dict"], seen
        assert fi.current_session() is None
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- the option table ---------------------------------------------------------------------


def _reference_rows() -> list[str]:
    from freeplay_integrations._config import OPTIONS

    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    return [
        f"| `{o.name}` | `{escape(o.type)}` | {escape(o.documented_default)} | {escape(o.doc)} |"
        for o in OPTIONS
    ]


def test_the_readme_configuration_reference_is_the_option_table() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows == _reference_rows()


def test_the_typed_options_are_the_option_table() -> None:
    from freeplay_integrations._config import OPTION_NAMES, FreeplayOptions

    assert tuple(FreeplayOptions.__annotations__) == OPTION_NAMES
    assert FreeplayOptions.__required_keys__ == frozenset()


def test_flask_config_defaults_come_from_the_option_table() -> None:
    pytest.importorskip("flask")
    from freeplay_integrations._config import OPTIONS
    from freeplay_integrations.flask import CONFIG_DEFAULTS

    assert dict(CONFIG_DEFAULTS) == {o.name: o.default for o in OPTIONS}


def test_every_mistake_is_reported_at_once(client: Freeplay) -> None:
    options = {
        "on_invalid": "ignore",
        "cookie_samesite": "loose",
        "recording": "later",
        "sesion_header": "X-A",
        "exclude_paths": ["health"],
    }
    with pytest.raises(ConfigurationError) as caught:
        settings(client, **options)
    message = str(caught.value)
    for expected in ("`on_invalid=`", "`cookie_samesite=`", "`recording=`", "`sesion_header=`"):
        assert expected in message
    assert "starting with '/'" in message
    errors = Settings.check({"client": client, "project_id": PROJECT_ID, **options}, environ={})
    assert sorted(e.option for e in errors) == [
        "",
        "cookie_samesite",
        "exclude_paths",
        "on_invalid",
        "recording",
    ]


def test_a_validator_runs_once_per_check(client: Freeplay, monkeypatch: Any) -> None:
    from freeplay_integrations import _config

    calls: list[object] = []
    option = next(o for o in _config.OPTIONS if o.name == "on_invalid")

    def counting(value: Any, name: Any) -> Any:
        calls.append(value)
        return option.validate(value, name)

    replaced = tuple(
        dataclasses.replace(o, validate=counting) if o is option else o for o in _config.OPTIONS
    )
    monkeypatch.setattr(_config, "OPTIONS", replaced)
    Settings.check({"client": client, "project_id": "p", "on_invalid": "bad", "recording": "x"})
    assert calls == ["bad"]


@pytest.mark.parametrize("module", ["freeplay_integrations.asgi", "freeplay_integrations.celery"])
def test_the_old_shutdown_constants_warn_and_read_the_one_shutdown_timeout(module: str) -> None:
    from freeplay_integrations._recording import shutdown_timeout

    imported = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match=r"configure_recording\(shutdown_timeout=\)"):
        value = imported.SHUTDOWN_FLUSH_TIMEOUT
    assert value == shutdown_timeout()
    assert "SHUTDOWN_FLUSH_TIMEOUT" not in imported.__all__
    with pytest.raises(AttributeError, match="no attribute 'NOT_A_NAME'"):
        imported.NOT_A_NAME  # noqa: B018
