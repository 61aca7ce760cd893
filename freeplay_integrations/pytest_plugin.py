"""pytest fixtures for testing code that records to Freeplay, without Freeplay.

Installed with the package (entry point `pytest11: freeplay_local`), so the fixtures are
available in every test suite once `freeplay-integrations` is installed; nothing to add to
`conftest.py`. To turn the plugin off: `pytest -p no:freeplay_local`. A project that does
not use it pays almost nothing for it: the plugin imports neither the SDK nor the server
until a fixture runs (`bench/pytest_startup.py` measures it).

`freeplay_local`
    A started :class:`freeplay_integrations.local.LocalFreeplay`: an in-memory,
    Freeplay-compatible recording server on a free loopback port, stopped after the test.
    Point your code at it with ``server.client()`` (a ready ``freeplay.Freeplay``), or with
    ``server.api_base`` / ``server.api_key`` / ``server.project_id``, then assert on what
    it received::

        def test_chat_records_one_session(freeplay_local, client):
            app = make_app(freeplay_client=freeplay_local.client(),
                           project_id=freeplay_local.project_id)
            ...
            freeplay_local.wait_for(lambda: len(freeplay_local.completions()) == 2)
            assert len(freeplay_local.sessions()) == 1

    ``freeplay_local.faults`` makes the API fail (``fail_next``, ``fail_for``, ``hang``,
    ``reset_next``) to test retries and timeouts.

    At teardown the background recorders are flushed (for up to `FLUSH_TIMEOUT` seconds)
    while the server is still up, then the server stops. Recorders created during the test
    spool into pytest's temporary directory (``FREEPLAY_SPOOL_PATH`` is set for the test),
    never into the project folder.

`freeplay_local_env`
    The same server, with ``FREEPLAY_API_KEY``, ``FREEPLAY_API_BASE`` and
    ``FREEPLAY_PROJECT_ID`` set to it for the test (through ``monkeypatch``), for code that
    builds its Freeplay client from the environment.

The `freeplay_local_env` ini option (``freeplay_local_env = true`` in ``pytest.ini`` or
``[tool.pytest.ini_options]``)
    For apps built at import time (``from main import app`` at the top of a test module):
    one server is started before pytest imports the test modules, and the ``FREEPLAY_*``
    variables, ``FREEPLAY_SPOOL_PATH`` included (a temporary directory), point at it for the
    whole run. Both fixtures then return that server, emptied (``reset()``) before each
    test and flushed after it; it stops when pytest exits.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from freeplay_integrations.local import LocalFreeplay

__all__ = [
    "FLUSH_TIMEOUT",
    "INI_ENV",
    "freeplay_local",
    "freeplay_local_env",
    "pytest_addoption",
    "pytest_configure",
    "pytest_unconfigure",
]

#: Seconds a fixture's teardown waits for background recordings before stopping the server
#: (what is still pending then goes to the spool, in the temporary directory).
FLUSH_TIMEOUT = 5.0

#: The ini option that starts one server for the whole run, before collection.
INI_ENV = "freeplay_local_env"

_SPOOL_NAME = "freeplay-spool.jsonl"
_SPOOL_VAR = "FREEPLAY_SPOOL_PATH"
_run_server = pytest.StashKey["LocalFreeplay"]()
_saved_env = pytest.StashKey[dict[str, str | None]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        INI_ENV,
        type="bool",
        default=False,
        help="Start one local Freeplay server before collection and point the FREEPLAY_*"
        " environment variables at it for the whole run (for apps built at import time).",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getini(INI_ENV):
        return
    from freeplay_integrations.local import LocalFreeplay

    server = LocalFreeplay().start()
    env = {
        **server.env(),
        _SPOOL_VAR: str(Path(tempfile.mkdtemp(prefix="freeplay-local-")) / _SPOOL_NAME),
    }
    config.stash[_saved_env] = {name: os.environ.get(name) for name in env}
    config.stash[_run_server] = server
    os.environ.update(env)


def pytest_unconfigure(config: pytest.Config) -> None:
    server = config.stash.get(_run_server, None)
    if server is None:
        return
    try:
        _flush()
        server.stop()
    finally:
        for name, value in config.stash[_saved_env].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        del config.stash[_run_server]


def _flush() -> None:
    # Only if something recorded: importing the recorder loads the SDK.
    import sys

    recording = sys.modules.get("freeplay_integrations._recording")
    if recording is not None:
        recording.flush(FLUSH_TIMEOUT)


@pytest.fixture
def freeplay_local(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[LocalFreeplay]:
    """A started in-memory local Freeplay server on a free loopback port."""
    shared = request.config.stash.get(_run_server, None)
    if shared is not None:
        shared.reset()
        try:
            yield shared
        finally:
            _flush()
        return

    # Imported here so that merely having the plugin installed costs nothing at start-up.
    from freeplay_integrations.local import LocalFreeplay

    spool_dir = tmp_path_factory.mktemp("freeplay-spool")
    monkeypatch.setenv(_SPOOL_VAR, str(spool_dir / _SPOOL_NAME))
    with LocalFreeplay() as server:
        try:
            yield server
        finally:
            _flush()  # while the server is still up


@pytest.fixture
def freeplay_local_env(
    freeplay_local: LocalFreeplay, monkeypatch: pytest.MonkeyPatch
) -> LocalFreeplay:
    """`freeplay_local`, with the `FREEPLAY_*` environment variables pointing at it."""
    for name, value in freeplay_local.env().items():
        monkeypatch.setenv(name, value)
    return freeplay_local
