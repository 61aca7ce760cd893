"""Delivery of recordings to Freeplay.

Until the background recorder lands, recordings are sent inline by the SDK, so there is
never anything queued: `flush` has nothing to wait for.
"""

from __future__ import annotations

__all__ = ["flush"]


def flush(timeout: float | None = None) -> bool:
    """Wait until every background recording so far is delivered or finally failed.

    Returns True when nothing is left to send.
    """
    return True
