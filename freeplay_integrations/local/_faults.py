"""Fault injection for the local Freeplay API: errors, resets, hangs and latency."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

__all__ = ["Action", "Arrival", "Faults"]

#: How many arrivals `Faults.arrivals()` keeps (the latest).
ARRIVALS_KEPT = 10_000


@dataclass(frozen=True)
class Action:
    """What the transport does with one API request: answer it, reset it, or fail it."""

    reset: bool = False
    status: int = 0
    #: The `Retry-After` header of a failed answer (seconds, or an HTTP date), if any.
    retry_after: str | None = None

    def headers(self) -> dict[str, str] | None:
        """The headers of a failed answer: its `Retry-After` (a 429 has one, `0` by default)."""
        if self.retry_after is not None:
            return {"Retry-After": self.retry_after}
        return {"Retry-After": "0"} if self.status == 429 else None


@dataclass(frozen=True)
class Arrival:
    """One API request as the faults saw it arrive."""

    #: `time.monotonic()` when it arrived (before any latency or hang).
    at: float
    #: The status a fault answered with; 0 when it was answered normally, -1 when reset.
    status: int
    #: API requests waiting in a latency or hang when it arrived, itself included: with a
    #: latency set, the requests in flight the server saw.
    concurrent: int


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
        self._fail_retry_after: str | None = None
        self._fail_for_retry_after: str | None = None
        self._waiting = 0
        self._arrivals: deque[Arrival] = deque(maxlen=ARRIVALS_KEPT)

    def fail_next(
        self, n: int = 1, status: int = 503, *, retry_after: float | str | None = None
    ) -> None:
        """Answer the next `n` API requests with `status` (e.g. 500, 503, 429) and a JSON body.

        `retry_after` (seconds, or an HTTP date) is sent as `Retry-After`; without it a
        429 carries `Retry-After: 0`.
        """
        _check_status(status)
        with self._lock:
            self._fail_count = n
            self._fail_status = status
            self._fail_retry_after = _header(retry_after)

    def fail_for(
        self, seconds: float, status: int = 503, *, retry_after: float | str | None = None
    ) -> None:
        """Answer every API request received in the next `seconds` with `status`.

        `retry_after` as for `fail_next`.
        """
        _check_status(status)
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_for_status = status
            self._fail_for_retry_after = _header(retry_after)

    def arrivals(self) -> list[Arrival]:
        """The API requests received (the latest `ARRIVALS_KEPT`), in arrival order."""
        with self._lock:
            return sorted(self._arrivals, key=lambda arrival: arrival.at)

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
            self._waiting += 1
            arrived, concurrent = time.monotonic(), self._waiting
        action = Action()
        try:
            action = self._decide()
        finally:
            with self._lock:
                self._waiting -= 1
                status = -1 if action.reset else action.status
                self._arrivals.append(Arrival(arrived, status, concurrent))
        return action

    def _decide(self) -> Action:
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
                return Action(status=self._fail_status, retry_after=self._fail_retry_after)
            if self._fail_until > time.monotonic():
                return Action(status=self._fail_for_status, retry_after=self._fail_for_retry_after)
        return Action()


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"fault status must be an HTTP error status (400-599), got {status}")


def _header(retry_after: float | str | None) -> str | None:
    if retry_after is None or isinstance(retry_after, str):
        return retry_after
    if not math.isfinite(retry_after) or retry_after < 0:
        raise ValueError(f"retry_after must be seconds >= 0 or an HTTP date, got {retry_after}")
    return f"{retry_after:g}"
