"""Fixtures shared by every adapter's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from freeplay_integrations import current_session


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def nothing_left_bound() -> Iterator[None]:
    """Every test starts and ends with no session bound in the test's own context."""
    assert current_session() is None, "a session was bound before the test started"
    yield
    assert current_session() is None, "a session was left bound after the test"
