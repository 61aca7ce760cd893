"""A Freeplay client whose recorder hands every operation to a list instead of sending it."""

from __future__ import annotations

from freeplay import Freeplay

from freeplay_integrations import configure_recording
from freeplay_integrations._recording import Operation
from freeplay_integrations.local import LocalFreeplay


def capturing_client(server: LocalFreeplay) -> tuple[Freeplay, list[Operation]]:
    """A client whose operations are captured (in the list) instead of sent."""
    client = server.client()
    captured: list[Operation] = []

    class Capture:
        def submit(self, op: Operation) -> bool:
            captured.append(op)
            return True

    configure_recording(client, via=Capture())
    return client, captured
