"""The `freeplay_local` pytest plugin, as users get it once the package is installed."""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, distribution

import pytest
import requests
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations.local import LocalFreeplay

pytest_plugins = ["pytester"]

INNER_TESTS = """
import requests
from freeplay.resources.recordings import RecordPayload

seen = {}


def test_records_into_the_fixture(freeplay_local):
    client = freeplay_local.client()
    session = client.sessions.create(custom_metadata={"user_id": "u-1"})
    client.recordings.create(
        RecordPayload(
            project_id=freeplay_local.project_id,
            all_messages=[{"role": "user", "content": "hi"}],
            session_info=session.session_info,
        )
    )
    assert [s["id"] for s in freeplay_local.sessions()] == [session.session_id]
    seen["first"] = freeplay_local


def test_each_test_gets_a_fresh_server_and_the_last_one_is_stopped(freeplay_local):
    assert freeplay_local.sessions() == []
    previous = seen["first"]
    assert previous.url != freeplay_local.url
    assert not previous.running


def test_env_fixture(freeplay_local_env, monkeypatch):
    import os

    assert os.environ["FREEPLAY_API_BASE"] == freeplay_local_env.api_base
    assert os.environ["FREEPLAY_API_KEY"] == freeplay_local_env.api_key
    assert os.environ["FREEPLAY_PROJECT_ID"] == freeplay_local_env.project_id
    page = requests.get(freeplay_local_env.url + "/", timeout=5)
    assert page.status_code == 200
"""


def test_fixture_is_a_started_in_memory_server(freeplay_local: LocalFreeplay) -> None:
    client = freeplay_local.client()
    session = client.sessions.create()

    client.recordings.create(
        RecordPayload(
            project_id=freeplay_local.project_id,
            all_messages=[{"role": "user", "content": "hi"}],
            session_info=session.session_info,
        )
    )

    assert freeplay_local.running
    assert freeplay_local.db_path == ":memory:"
    assert freeplay_local.url.startswith("http://127.0.0.1:")
    assert len(freeplay_local.completions(session.session_id)) == 1
    assert requests.get(freeplay_local.url + "/", timeout=5).status_code == 200


def test_env_fixture_points_the_environment_at_the_server(
    freeplay_local_env: LocalFreeplay,
) -> None:
    assert os.environ["FREEPLAY_API_BASE"] == freeplay_local_env.api_base
    assert os.environ["FREEPLAY_API_KEY"] == freeplay_local_env.api_key


def test_plugin_works_in_a_users_test_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=INNER_TESTS)

    result = pytester.runpytest("-p", "no:django", "-p", "no:cacheprovider")

    result.assert_outcomes(passed=3)


def test_plugin_can_be_disabled(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_uses_it(freeplay_local):\n    pass\n")

    result = pytester.runpytest("-p", "no:django", "-p", "no:freeplay_local")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'freeplay_local' not found*"])


def test_plugin_is_registered_as_a_pytest11_entry_point() -> None:
    try:
        dist = distribution("freeplay-integrations")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        pytest.skip("freeplay-integrations is not installed (pip install -e .)")

    plugins = {ep.name: ep.value for ep in dist.entry_points if ep.group == "pytest11"}

    assert plugins == {"freeplay_local": "freeplay_integrations.pytest_plugin"}
