"""pytest fixtures for testing code that records to Freeplay, without Freeplay.

Installed with the package (entry point `pytest11: freeplay_local`), so the fixtures are
available in every test suite once `freeplay-integrations` is installed; nothing to add to
`conftest.py`. To turn the plugin off: `pytest -p no:freeplay_local`.

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

`freeplay_local_env`
    The same server, with ``FREEPLAY_API_KEY``, ``FREEPLAY_API_BASE`` and
    ``FREEPLAY_PROJECT_ID`` set to it for the test (through ``monkeypatch``), for code that
    builds its Freeplay client from the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from freeplay_integrations.local import LocalFreeplay

__all__ = ["freeplay_local", "freeplay_local_env"]


@pytest.fixture
def freeplay_local() -> Iterator[LocalFreeplay]:
    """A started in-memory local Freeplay server on a free loopback port."""
    # Imported here so that merely having the plugin installed costs nothing at start-up.
    from freeplay_integrations.local import LocalFreeplay

    with LocalFreeplay() as server:
        yield server


@pytest.fixture
def freeplay_local_env(
    freeplay_local: LocalFreeplay, monkeypatch: pytest.MonkeyPatch
) -> LocalFreeplay:
    """`freeplay_local`, with the `FREEPLAY_*` environment variables pointing at it."""
    for name, value in freeplay_local.env().items():
        monkeypatch.setenv(name, value)
    return freeplay_local
