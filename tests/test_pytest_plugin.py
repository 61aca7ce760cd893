"""The `freeplay_local` pytest plugin, as users get it once the package is installed."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

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


UNFLUSHED_TESTS = """
from freeplay_integrations import record, session_scope
from freeplay_integrations.local import LocalFreeplay

seen = {}


def test_records_without_waiting(freeplay_local, monkeypatch):
    close = LocalFreeplay.close

    def close_and_count(server):
        seen["stored_at_close"] = len(server.completions())
        close(server)

    # Undone after the fixture's teardown (the fixture itself depends on monkeypatch).
    monkeypatch.setattr(LocalFreeplay, "close", close_and_count)
    client = freeplay_local.client()
    with session_scope(client, project_id=freeplay_local.project_id):
        record(all_messages=[{"role": "user", "content": "hi"}])


def test_the_recording_arrived_before_the_server_was_closed():
    assert seen == {"stored_at_close": 1}
"""

HUNG_TESTS = """
from freeplay_integrations import record, session_scope


def test_records_while_freeplay_hangs(freeplay_local):
    freeplay_local.faults.hang(60)
    client = freeplay_local.client()
    with session_scope(client, project_id=freeplay_local.project_id):
        record(all_messages=[{"role": "user", "content": "hi"}])
"""


def _spools(root: Path) -> list[Path]:
    return sorted(root.rglob("freeplay-spool*.jsonl"))


def test_fixture_flushes_while_its_server_is_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user=UNFLUSHED_TESTS)

    result = pytester.runpytest_subprocess("-p", "no:django", "-p", "no:randomly")

    result.assert_outcomes(passed=2)
    assert _spools(pytester.path) == []


def test_what_cannot_be_delivered_is_spooled_in_pytests_tmp_dir(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_user=HUNG_TESTS)
    basetemp = pytester.path.parent / "inner-basetemp"

    result = pytester.runpytest_subprocess(
        "-p", "no:django", "-p", "no:randomly", f"--basetemp={basetemp}"
    )

    result.assert_outcomes(passed=1)
    assert _spools(pytester.path) == []
    [spool] = _spools(basetemp)
    assert '"all_messages"' in spool.read_text()


IMPORT_TIME_APP = """
import os

from freeplay import Freeplay

# Built at import time, from the environment, as an app module's globals are.
CLIENT = Freeplay(freeplay_api_key=os.environ["FREEPLAY_API_KEY"],
                  api_base=os.environ["FREEPLAY_API_BASE"])
PROJECT_ID = os.environ["FREEPLAY_PROJECT_ID"]
"""

IMPORT_TIME_TESTS = """
import os

from freeplay_integrations import record, session_scope
from main import CLIENT, PROJECT_ID

servers = []


def test_the_app_was_built_against_the_run_server(freeplay_local):
    assert os.environ["FREEPLAY_API_BASE"] == freeplay_local.api_base
    assert PROJECT_ID == freeplay_local.project_id
    with session_scope(CLIENT, project_id=PROJECT_ID):
        record(all_messages=[{"role": "user", "content": "hi"}])
    freeplay_local.wait_for(lambda: len(freeplay_local.completions()) == 1)
    servers.append(freeplay_local)


def test_each_test_sees_the_same_server_emptied(freeplay_local_env):
    assert freeplay_local_env is servers[0]
    assert freeplay_local_env.running
    assert freeplay_local_env.completions() == []
    assert os.environ["FREEPLAY_SPOOL_PATH"].endswith("freeplay-spool.jsonl")
    assert not os.environ["FREEPLAY_SPOOL_PATH"].startswith(os.getcwd())
"""


def test_ini_option_points_an_import_time_app_at_one_server(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nfreeplay_local_env = true\n")
    pytester.makepyfile(main=IMPORT_TIME_APP, test_user=IMPORT_TIME_TESTS)
    env_before = {k: v for k, v in os.environ.items() if k.startswith("FREEPLAY_")}

    result = pytester.runpytest_inprocess("-p", "no:django", "-p", "no:randomly")

    result.assert_outcomes(passed=2)
    # The run's variables are gone once pytest has finished.
    assert {k: v for k, v in os.environ.items() if k.startswith("FREEPLAY_")} == env_before


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


def test_importing_the_package_loads_neither_the_sdk_nor_requests() -> None:
    for code in (
        "import freeplay_integrations",
        "import freeplay_integrations.pytest_plugin",
        "from freeplay_integrations import __version__",
    ):
        loaded = _modules_after(code)

        assert "freeplay_integrations" in loaded
        assert not {m for m in loaded if m.split(".")[0] in {"freeplay", "requests"}}, code


def test_public_names_load_on_first_use() -> None:
    loaded = _modules_after("from freeplay_integrations import record")

    assert {"freeplay", "requests", "freeplay_integrations._helpers"} <= loaded


def test_every_public_name_resolves() -> None:
    import freeplay_integrations

    for name in freeplay_integrations.__all__:
        assert getattr(freeplay_integrations, name) is not None, name
    assert set(freeplay_integrations.__all__) <= set(dir(freeplay_integrations))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        freeplay_integrations.nope  # noqa: B018


def test_version_is_the_distributions() -> None:
    import freeplay_integrations

    try:
        dist = distribution("freeplay-integrations")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        pytest.skip("freeplay-integrations is not installed (pip install -e .)")

    assert freeplay_integrations.__version__ == dist.version


def test_the_lazy_table_names_every_public_name() -> None:
    # A name added to `__all__` must also say which module defines it (and vice versa).
    import freeplay_integrations

    assert set(freeplay_integrations._MODULES) == set(freeplay_integrations.__all__) - {
        "__version__"
    }
