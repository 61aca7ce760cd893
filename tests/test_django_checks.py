"""System checks of `freeplay_integrations.django` (an app in the test settings' INSTALLED_APPS),
run the way `manage.py check` runs them."""

from __future__ import annotations

import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from django.core.checks import CheckMessage, run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client

from freeplay_integrations import current_session
from freeplay_integrations.django.checks import CHECK_IDS
from freeplay_integrations.local import DEFAULT_PROJECT_ID as PROJECT_ID

if TYPE_CHECKING:
    from pytest_django.fixtures import Settings as SettingsWrapper

OURS = "freeplay_integrations.django.FreeplaySessionMiddleware"
SECURITY = "django.middleware.security.SecurityMiddleware"
SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
COMMON = "django.middleware.common.CommonMiddleware"
AUTH = "django.contrib.auth.middleware.AuthenticationMiddleware"
CORS = "corsheaders.middleware.CorsMiddleware"
VALID = {"API_KEY": "k", "API_BASE": "http://127.0.0.1:9/api", "PROJECT_ID": PROJECT_ID}


PROJECT_ID = "5e0c3c8a-3b7e-4f0e-9a51-2c4d6e8f0a1b"


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FREEPLAY_API_KEY", "FREEPLAY_API_BASE", "FREEPLAY_PROJECT_ID"):
        monkeypatch.delenv(name, raising=False)


def ours() -> list[CheckMessage]:
    return [m for m in run_checks() if str(m.id).startswith("freeplay_integrations.")]


def ids() -> list[str]:
    return sorted(str(m.id) for m in ours())


def only(check_id: str) -> CheckMessage:
    [message] = [m for m in ours() if m.id == check_id]
    assert message.hint, f"{check_id} has no hint"
    return message


def test_the_test_settings_pass_every_check() -> None:
    assert ours() == []


def test_every_id_is_documented() -> None:
    assert set(CHECK_IDS) == {f"freeplay_integrations.E00{n}" for n in range(1, 8)} | {
        f"freeplay_integrations.W00{n}" for n in range(1, 5)
    }


# -- FREEPLAY --------------------------------------------------------------------------------


def test_e001_no_api_key_and_no_client(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {"PROJECT_ID": PROJECT_ID}
    message = only("freeplay_integrations.E001")
    assert 'FREEPLAY["API_KEY"]' in message.msg
    assert "FREEPLAY_API_KEY" in message.hint  # type: ignore[operator]
    assert 'FREEPLAY["CLIENT"]' in message.hint  # type: ignore[operator]


def test_the_environment_supplies_the_key_base_and_project(
    settings: SettingsWrapper, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.FREEPLAY = {}
    assert ids() == ["freeplay_integrations.E001", "freeplay_integrations.E002"]
    monkeypatch.setenv("FREEPLAY_API_KEY", "k")
    monkeypatch.setenv("FREEPLAY_API_BASE", "http://127.0.0.1:9/api")
    monkeypatch.setenv("FREEPLAY_PROJECT_ID", PROJECT_ID)
    assert ids() == []


def test_e001_client_that_does_not_import(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {"PROJECT_ID": PROJECT_ID, "CLIENT": "myproject.nowhere.client"}
    message = only("freeplay_integrations.E001")
    assert "'myproject.nowhere.client' could not be imported" in message.msg


def test_e001_client_and_api_key_together(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**VALID, "CLIENT": "tests.django_app.hooks.CLIENT"}
    assert "not both" in only("freeplay_integrations.E001").msg


def test_e002_no_project_id(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {"API_KEY": "k", "API_BASE": "http://127.0.0.1:9/api"}
    message = only("freeplay_integrations.E002")
    assert 'FREEPLAY["PROJECT_ID"]' in message.msg
    assert "FREEPLAY_PROJECT_ID" in message.hint  # type: ignore[operator]


def test_e003_typos_name_the_closest_key(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**VALID, "PROJECTID": "x", "api_base": "x"}
    messages = sorted(m.msg for m in ours() if m.id == "freeplay_integrations.E003")
    assert messages == [
        'Unknown key "PROJECTID" in settings.FREEPLAY. Did you mean "PROJECT_ID"?',
        'Unknown key "api_base" in settings.FREEPLAY. Did you mean "API_BASE"?',
    ]
    assert ids() == ["freeplay_integrations.E003"] * 2


def test_e004_bad_on_invalid(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**VALID, "ON_INVALID": "ignore"}
    assert "'ignore'" in only("freeplay_integrations.E004").msg


def test_e004_bad_on_unauthorized(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {**VALID, "ON_UNAUTHORIZED": "403"}
    assert 'FREEPLAY["ON_UNAUTHORIZED"]' in only("freeplay_integrations.E004").msg


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"COOKIE_SAMESITE": "sometimes"}, "'sometimes'"),
        ({"COOKIE_SAMESITE": "none", "COOKIE_SECURE": False}, "browsers drop"),
    ],
)
def test_e005_bad_samesite(
    settings: SettingsWrapper, options: dict[str, Any], expected: str
) -> None:
    settings.FREEPLAY = {**VALID, **options}
    assert expected in only("freeplay_integrations.E005").msg


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"COOKIE_PATH": "chat"}, 'FREEPLAY["COOKIE_PATH"]'),
        ({"SESSION_METADATA": "nowhere.hook"}, 'FREEPLAY["SESSION_METADATA"]'),
        ({"SIGNING_SECRET": "short"}, 'FREEPLAY["SIGNING_SECRET"]'),
    ],
)
def test_e006_other_malformed_options(
    settings: SettingsWrapper, options: dict[str, Any], expected: str
) -> None:
    settings.FREEPLAY = {**VALID, **options}
    assert expected in only("freeplay_integrations.E006").msg


def test_e006_freeplay_is_not_a_dict(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = ["API_KEY", "k"]
    assert "must be a dict" in only("freeplay_integrations.E006").msg


def test_every_problem_is_reported_in_one_run(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {
        "ON_INVALID": "maybe",
        "COOKIE_SAMESITE": "x",
        "TYPO": 1,
        "COOKIE_PATH": "x",
    }
    assert ids() == [
        "freeplay_integrations.E001",
        "freeplay_integrations.E002",
        "freeplay_integrations.E003",
        "freeplay_integrations.E004",
        "freeplay_integrations.E005",
        "freeplay_integrations.E006",
    ]


def test_manage_py_check_fails_on_errors(settings: SettingsWrapper) -> None:
    settings.FREEPLAY = {"API_KEY": "k", "API_BASE": "http://127.0.0.1:9/api"}
    with pytest.raises(SystemCheckError, match=r"freeplay_integrations\.E002"):
        call_command("check")
    settings.FREEPLAY = VALID
    call_command("check")


# -- MIDDLEWARE ------------------------------------------------------------------------------


def test_w001_middleware_missing(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [SECURITY, COMMON]
    message = only("freeplay_integrations.W001")
    assert OURS in message.hint  # type: ignore[operator]


def test_the_middleware_may_be_named_by_its_module_path(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [
        SECURITY,
        "freeplay_integrations.django.middleware.FreeplaySessionMiddleware",
    ]
    assert ids() == []


def test_w002_after_middleware_that_answer_on_their_own(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [SECURITY, COMMON, CORS, OURS]
    message = only("freeplay_integrations.W002")
    assert COMMON in message.msg and CORS in message.msg
    assert SECURITY not in message.msg


def test_after_authentication_is_fine_with_a_hook(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [SECURITY, SESSIONS, COMMON, AUTH, OURS]
    settings.FREEPLAY = {**VALID, "SESSION_METADATA": "tests.django_app.hooks.tenant_metadata"}
    assert ids() == []
    # ... but not without one: then nothing needs it that late.
    settings.FREEPLAY = VALID
    assert ids() == ["freeplay_integrations.W002"]


def test_w003_hooks_run_before_authentication(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [SECURITY, OURS, SESSIONS, COMMON, AUTH]
    settings.FREEPLAY = {**VALID, "AUTHORIZE_SESSION": "tests.django_app.hooks.allow_only_trusted"}
    message = only("freeplay_integrations.W003")
    assert "AUTHORIZE_SESSION" in message.msg and AUTH in message.hint  # type: ignore[operator]


def test_w004_cors_expose_headers_hide_the_session_header(settings: SettingsWrapper) -> None:
    settings.MIDDLEWARE = [SECURITY, CORS, SESSIONS, AUTH, OURS]
    settings.FREEPLAY = {**VALID, "SESSION_METADATA": "tests.django_app.hooks.tenant_metadata"}
    settings.CORS_EXPOSE_HEADERS = ["X-Request-Id"]
    message = only("freeplay_integrations.W004")
    assert '"X-Freeplay-Session-Id"' in message.hint  # type: ignore[operator]
    settings.CORS_EXPOSE_HEADERS = ["X-Request-Id", "x-freeplay-session-id"]
    assert ids() == []


@pytest.mark.parametrize(
    "cache",
    ["django.middleware.cache.FetchFromCacheMiddleware", "django.middleware.cache.CacheMiddleware"],
)
def test_e007_after_the_cache_middleware(settings: SettingsWrapper, cache: str) -> None:
    settings.MIDDLEWARE = [SECURITY, cache, OURS]
    assert "share a session" in only("freeplay_integrations.E007").msg


def test_in_the_right_place_a_cached_response_carries_each_visitors_own_session(
    settings: SettingsWrapper,
) -> None:
    # Why E007 matters: the cached response holds the first visitor's cookie and header.
    # Before FetchFromCacheMiddleware, the middleware overwrites them for every visitor.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    settings.CACHE_MIDDLEWARE_SECONDS = 60
    settings.CACHE_MIDDLEWARE_KEY_PREFIX = str(uuid.uuid4())
    settings.MIDDLEWARE = [
        "django.middleware.cache.UpdateCacheMiddleware",
        SECURITY,
        OURS,
        "django.middleware.cache.FetchFromCacheMiddleware",
    ]
    assert ids() == []
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    one = Client().get("/health/", headers={"X-Freeplay-Session-Id": first})
    two = Client().get("/health/", headers={"X-Freeplay-Session-Id": second})
    assert current_session() is None
    assert one.json() == two.json()  # the second was served from the cache
    assert (
        one["X-Freeplay-Session-Id"] == first and one.cookies["freeplay_session_id"].value == first
    )
    assert (
        two["X-Freeplay-Session-Id"] == second
        and two.cookies["freeplay_session_id"].value == second
    )


# -- installing ------------------------------------------------------------------------------


def test_import_without_django_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['django'] = None\n"
        "try:\n"
        "    import freeplay_integrations.django\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'freeplay-integrations[django]'" in result.stdout
