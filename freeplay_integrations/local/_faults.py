"""Fault injection for the local Freeplay API: errors, resets, hangs and latency."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

__all__ = ["Action", "Faults"]


@dataclass(frozen=True)
class Action:
    """What the transport does with one API request: answer it, reset it, or fail it."""

    reset: bool = False
    status: int = 0


class Faults:
    """Make the API misbehave, to test retries and timeouts. Thread-safe.

    Faults apply to every request under `/api` (never to the web page), in this order:
    latency delays every answer, a hang delays the request until its window ends, then
    `reset_next`, `fail_next` and `fail_for` decide whether it is answered normally.
    Faulted requests are not stored.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail_count = 0
        self._fail_status = 503
        self._fail_until = 0.0
        self._fail_for_status = 503
        self._reset_count = 0
        self._hang_until = 0.0
        self._released = threading.Event()
        self._latency = 0.0
        self._latency_cut = threading.Event()

    def fail_next(self, n: int = 1, status: int = 503) -> None:
        """Answer the next `n` API requests with `status` (e.g. 500, 503, 429) and a JSON body.

        A 429 carries `Retry-After: 0`.
        """
        _check_status(status)
        with self._lock:
            self._fail_count = n
            self._fail_status = status

    def fail_for(self, seconds: float, status: int = 503) -> None:
        """Answer every API request received in the next `seconds` with `status`."""
        _check_status(status)
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_for_status = status

    def hang(self, seconds: float) -> None:
        """Requests received in the next `seconds` wait until the window ends, then proceed.

        `release()` ends the window early and lets waiting requests through.
        """
        with self._lock:
            self._released.set()
            self._released = threading.Event()
            self._hang_until = time.monotonic() + seconds

    def release(self) -> None:
        """End a hang now: waiting requests are answered, new ones are not delayed."""
        with self._lock:
            self._hang_until = 0.0
            self._released.set()

    def latency(self, seconds: float) -> None:
        """Delay every API answer by `seconds`; `latency(0)` (or `clear()`) removes it.

        Each request waits in its own thread, so concurrent requests are delayed together,
        not one after another. Requests already waiting are let through when it changes.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"latency must be a finite number of seconds >= 0, got {seconds}")
        with self._lock:
            self._latency = float(seconds)
            self._latency_cut.set()
            self._latency_cut = threading.Event()

    def reset_next(self, n: int = 1) -> None:
        """Close the connection of the next `n` API requests without answering."""
        with self._lock:
            self._reset_count = n

    def clear(self) -> None:
        """Remove every fault (latency included) and release any hang."""
        with self._lock:
            self._fail_count = 0
            self._fail_until = 0.0
            self._reset_count = 0
        self.latency(0)
        self.release()

    @property
    def active(self) -> bool:
        now = time.monotonic()
        with self._lock:
            return bool(
                self._fail_count
                or self._reset_count
                or self._latency
                or self._fail_until > now
                or self._hang_until > now
            )

    def wake(self) -> None:
        """Let every waiting request through now (the server is stopping); faults stay set."""
        with self._lock:
            self._latency_cut.set()
            self._latency_cut = threading.Event()
        self.release()

    def on_request(self) -> Action:
        """Called by the transport for each API request, in the request's own thread."""
        with self._lock:
            latency, cut = self._latency, self._latency_cut
        if latency > 0:
            cut.wait(latency)
        with self._lock:
            remaining = self._hang_until - time.monotonic()
            released = self._released
        if remaining > 0:
            released.wait(remaining)
        with self._lock:
            if self._reset_count > 0:
                self._reset_count -= 1
                return Action(reset=True)
            if self._fail_count > 0:
                self._fail_count -= 1
                return Action(status=self._fail_status)
            if self._fail_until > time.monotonic():
                return Action(status=self._fail_for_status)
        return Action()


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"fault status must be an HTTP error status (400-599), got {status}")
