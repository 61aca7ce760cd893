"""The scheduler: one `Recorder` per Freeplay client, sending with adaptive concurrency.

`submit` puts an operation on the ready queue (or holds it until the one it follows is
handled) and returns: no network I/O on the request path. Sending threads are started
while a backlog waits and Freeplay answers, up to `max_concurrency`; a thread idle for
`idle_timeout` exits, and one that made `OPERATIONS_PER_THREAD` attempts hands over to a
new one. A transient failure puts the operation on a timer (capped, jittered backoff, or
what `Retry-After` says) without holding a thread; it is retried for `retry_for` seconds,
then spooled. Past the queue's count or byte budget, new operations go to the spool; once
Freeplay answers again the recorder drains the spool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import logging
import os
import random
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .._errors import ConfigurationError
from .._ids import top_up as top_up_ids
from . import _spool
from ._operations import DeleteSession, Operation, session_ref
from ._spool import Outcome
from ._transport import Failure, SdkTransport

if TYPE_CHECKING:
    from freeplay import Freeplay

__all__ = [
    "ENV_SPOOL_PATH",
    "Recorder",
    "RecorderConfig",
    "RecorderStats",
    "Route",
    "configure_recording",
    "flush",
    "recorder_for",
    "recorder_stats",
]

logger = logging.getLogger("freeplay_integrations.recording")

#: Environment variable naming the spool file.
ENV_SPOOL_PATH = "FREEPLAY_SPOOL_PATH"

LOG_REJECTED = (
    "freeplay_integrations: Freeplay refused %d %s operation(s) with %s (dropped, not "
    "retried); last for session %s: %s"
)
LOG_RETRY = "freeplay_integrations: %s for session %s failed (attempt %d), retrying in %.2fs: %s"
LOG_SPOOLED = (
    "freeplay_integrations: %d operation(s) not delivered (%s) written to the spool %s; "
    "the recorder sends them once Freeplay answers"
)
LOG_SPOOL_FAILED = (
    "freeplay_integrations: LOST %d operation(s): could not write the spool %s (%s). "
    "Set FREEPLAY_SPOOL_PATH (or configure_recording(spool_path=...)) to a writable file."
)
LOG_SPOOL_UNWRITABLE = (
    "freeplay_integrations: the spool %s cannot be written (%s): what cannot be delivered "
    "would be lost. Set FREEPLAY_SPOOL_PATH (or configure_recording(spool_path=...)) to a "
    "writable file."
)
LOG_QUEUE_FULL = (
    "freeplay_integrations: the recording queue is over its budget (%d operations or %d "
    "bytes); %d operation(s) went to the spool instead."
)
LOG_DRAINED = (
    "freeplay_integrations: drained the spool %s: %d sent, %d refused, %d kept, %d unreadable"
)
LOG_WORKER_CRASHED = "freeplay_integrations: recorder worker error (the worker carries on)"

#: Final statuses that are spooled anyway: a replay with the right key delivers them.
SPOOLED_STATUSES = frozenset({401, 403})
#: Seconds between two log lines of one kind (the counts add up meanwhile).
LOG_INTERVAL = 10.0
#: Seconds between two looks for a spool file once Freeplay answers.
DRAIN_CHECK_INTERVAL = 5.0
#: Operations `submit` may leave in the intake (not yet counted in the byte budget) before
#: it takes the lock and admits them itself.
INTAKE_MAX = 64

#: Why an operation submitted after the exit flush is in the spool.
LATE_REASON = "recorded after the exit flush"


@runtime_checkable
class Route(Protocol):
    """Another way to deliver: `submit(op)` returns True when it took the operation.

    A route may also have `attach(recorder)`, called when it becomes the recorder's route
    (it may later hand back, with `recorder.submit(op)`, what it took and could not deliver,
    provided its own `submit` then declines it), and `flush(deadline)`, called by the
    recorder's `flush` and exit flush before its own, to settle what it took (`deadline` a
    `time.monotonic()` value, or None).
    """

    def submit(self, op: Operation) -> bool: ...


#: Operations a sending thread attempts before a successor it starts takes its place. The
#: C allocator keeps caches per thread (glibc's tcache: up to 7 freed blocks of each size
#: to 1 KiB) that fill slowly with the sizes a thread has seen: 64 threads that never exit
#: grow the process's memory for hundreds of thousands of recordings. A thread's exit
#: hands its caches back.
OPERATIONS_PER_THREAD = 50


@dataclasses.dataclass(frozen=True)
class RecorderConfig:
    """How a recorder delivers. See `configure_recording` for each setting."""

    spool_path: str
    queue_size: int = 10_000
    queue_bytes: int = 64 * 1024 * 1024
    max_concurrency: int = 64
    attempt_timeout: float = 10.0
    retry_for: float = 300.0
    max_attempts: int | None = None
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    sync_timeout: float = 15.0
    shutdown_timeout: float = 5.0
    idle_timeout: float = 30.0
    put_timeout: float = 0.0
    via: object | None = None

    def validate(self) -> RecorderConfig:
        for name in ("queue_size", "queue_bytes", "max_concurrency"):
            _check_int(name, getattr(self, name))
        if self.max_attempts is not None:
            _check_int("max_attempts", self.max_attempts)
        for name in (
            "attempt_timeout",
            "retry_for",
            "backoff_base",
            "backoff_max",
            "sync_timeout",
            "shutdown_timeout",
            "idle_timeout",
            "put_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigurationError(
                    f"configure_recording({name}=...) must be a number of seconds >= 0, "
                    f"not {value!r}."
                )
        if self.attempt_timeout <= 0:
            raise ConfigurationError(
                "configure_recording(attempt_timeout=...) must be > 0: an attempt without a "
                "time limit lets a hung Freeplay block a worker forever."
            )
        if not isinstance(self.spool_path, str) or not self.spool_path:
            raise ConfigurationError(
                f"configure_recording(spool_path=...) must be a file path, not {self.spool_path!r}."
            )
        return self


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(
            f"configure_recording({name}=...) must be an int >= 1, not {value!r}."
        )


@dataclasses.dataclass(frozen=True)
class RecorderStats:
    """Counters of a recorder (or the sum over every recorder).

    Every operation handed to a recorder ends in exactly one of `sent`, `failed`,
    `spooled`, `cancelled`, `lost` and `routed`; `pending` are queued or being sent now.
    """

    #: Operations accepted on the background queue.
    queued: int = 0
    #: Operations delivered (background and sync).
    sent: int = 0
    #: Retry attempts made after a transient failure.
    retried: int = 0
    #: Operations Freeplay refused with a final 4xx (or that could not be sent at all):
    #: dropped, logged once per (kind, status) per interval.
    failed: int = 0
    #: Operations written to the spool (over budget, retry time spent, flush timeout, exit).
    spooled: int = 0
    #: Operations dropped because `end_session(delete=True)` deleted their session first.
    cancelled: int = 0
    #: Operations that could not even be written to the spool (logged as LOST).
    lost: int = 0
    #: Of the spooled ones, how many found the queue over its budget.
    overflowed: int = 0
    #: Queued or in flight now.
    pending: int = 0
    #: Taken by the `via=` route.
    routed: int = 0
    #: Delivered from the spool by the recorder's own drain.
    drained: int = 0

    def __add__(self, other: RecorderStats) -> RecorderStats:
        return RecorderStats(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


_TERMINAL = ("sent", "failed", "spooled", "cancelled", "lost")


class _RateLimit:
    """Allows a log line at most every `interval` seconds; counts what happened meanwhile."""

    __slots__ = ("count", "interval", "next_at")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.next_at = 0.0
        self.count = 0

    def hit(self, n: int) -> int:
        self.count += n
        now = time.monotonic()
        if now < self.next_at:
            return 0
        self.next_at = now + self.interval
        count, self.count = self.count, 0
        return count


class Recorder:
    """Sends one Freeplay client's operations, in the background or inline."""

    def __init__(self, client: Freeplay, config: RecorderConfig) -> None:
        self._config = config.validate()
        self._transport = SdkTransport(client, pool_size=self._config.max_concurrency)
        self.api_base = self._transport.api_base
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        #: Submitted without the lock (see `submit`), not yet admitted to the queue.
        self._intake: deque[Operation] = deque()
        #: Idle sending threads, each waiting on its own lock (see `_sleep_locked`).
        self._sleepers: deque[threading.Lock] = deque()
        self._ready: deque[Operation] = deque()
        self._timers: list[tuple[float, int, Operation]] = []
        self._live: dict[int, Operation] = {}
        self._by_key: dict[str, Operation] = {}
        self._by_session: dict[str, set[Operation]] = {}
        self._bytes = 0
        self._seq = 0
        self._threads = 0
        self._to_start = 0
        self._flushers = 0
        self._putters = 0
        self._healthy = True
        #: Requests being attempted now, and how many may be: halved on each transient
        #: failure, one more on each success, never past `max_concurrency`.
        self._in_flight = 0
        self._limit = self._config.max_concurrency
        #: No attempt starts before this (monotonic): what a `Retry-After` asked for.
        self._not_before = 0.0
        self._counts = dict.fromkeys(
            ("queued", "retried", "overflowed", "routed", "drained", *_TERMINAL), 0
        )
        self._logs: dict[object, _RateLimit] = {}
        self._draining = False
        self._next_drain_check = 0.0
        #: The process is exiting (see `close`): no drain starts, a running one stops
        #: sending and puts the rest back in the spool.
        self._exiting = False
        #: The exit flush is over: what is submitted now goes to the spool at once.
        self._closed = False
        self._route: Route | None = None
        self._set_route(self._config.via)

    def __repr__(self) -> str:
        return f"<Recorder {self.api_base} {self.stats()}>"

    @property
    def config(self) -> RecorderConfig:
        return self._config

    @property
    def transport(self) -> SdkTransport:
        return self._transport

    def configure(self, **changes: Any) -> None:
        config = dataclasses.replace(self._config, **changes).validate()
        if config.max_concurrency != self._config.max_concurrency:
            self._transport.resize(config.max_concurrency)
        if config.via is not self._config.via:
            self._set_route(config.via)
        moved = config.spool_path != self._config.spool_path
        self._config = config
        if moved:
            _start_up(self)

    def _set_route(self, via: object | None) -> None:
        if via is None or via is False:
            self._route = None
        elif callable(getattr(via, "submit", None)):
            self._route = via  # type: ignore[assignment]
            attach = getattr(via, "attach", None)
            if callable(attach):
                attach(self)
        elif hasattr(via, "send_task") and hasattr(via, "conf"):
            try:
                from .. import _celery_route
            except ImportError as exc:
                raise ConfigurationError(
                    "configure_recording(via=<Celery app>): the Celery route is not "
                    f"available in this version ({exc})."
                ) from exc
            self._route = _celery_route.CeleryRoute(via, self)
        else:
            raise ConfigurationError(
                "configure_recording(via=...) takes a Celery app or an object with a "
                f"submit(op) -> bool method, not {type(via).__name__}."
            )

    # -- counters ----------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._counts[name] += n

    def _log_limited(self, key: object, n: int = 1) -> int:
        limit = self._logs.get(key)
        if limit is None:
            limit = self._logs[key] = _RateLimit(LOG_INTERVAL)
        return limit.hit(n)

    def stats(self) -> RecorderStats:
        with self._cond:
            self._admit_locked()
            return RecorderStats(**self._counts, pending=len(self._live))

    # -- submit ------------------------------------------------------------------------

    def submit(self, op: Operation) -> None:
        """Queue `op`. Never does network I/O; never blocks (past `put_timeout`).

        This runs on the request path. An operation that follows nothing (a completion, a
        trace) is appended to the intake without taking the lock: a sending thread holding
        it may have been preempted, and on a busy machine waiting for it costs
        milliseconds. The size is a cheap estimate (the sending thread serialises); an
        idle sending thread, if any, is woken through its own lock. The sending threads
        admit the intake (in order) each time they look for work. The rest, and anything
        near the budget, takes the locked path (`_submit_locked`).
        """
        route = self._route
        if route is not None and route.submit(op):
            self._count("routed")
            return
        config = self._config
        size = op.size = op.estimate_size()
        intake = self._intake
        live = self._live
        if (
            op.follows is None
            and not op.follows_session
            and self._threads
            and len(intake) < INTAKE_MAX
            and len(live) + len(intake) < config.queue_size
            and self._bytes + size <= config.queue_bytes
            and not isinstance(op, DeleteSession)
        ):
            intake.append(op)
            # A sending thread registers as a sleeper before it looks at the intake, and
            # this looks for sleepers after the append: one of the two sees the other. Only
            # an append that left the intake with one operation wakes one (counted after the
            # append: an intake emptied meanwhile is seen); the thread that admits the
            # intake admits all of it, and wakes another while more is ready.
            if len(intake) == 1 and self._sleepers:
                self._wake_sleeper()
            if self._closed:  # (read after the append: `close` sets it, then sweeps)
                self._sweep(LATE_REASON)
            return
        self._submit_locked(op, size)

    def _submit_locked(self, op: Operation, size: int) -> None:
        config = self._config
        session_id = op.session_id
        with self._cond:
            self._admit_locked()  # what came before goes first (and may be what op follows)
            closed = self._closed
            deps: list[Operation] | tuple[()] = ()
            if isinstance(op, DeleteSession):
                deps = self._cancel_locked(session_id)
            elif op.follows_session:
                earlier = self._by_session.get(session_id, ())
                deps = [other for other in earlier if other.creates_session]
            else:
                follows = op.follows
                if follows is not None:
                    dep = self._by_key.get(follows)
                    if dep is not None:
                        deps = [dep]
            queued = not closed
            if queued and self._over_budget(size):
                if config.put_timeout > 0:
                    self._putters += 1
                    try:
                        self._cond.wait_for(lambda: not self._over_budget(size), config.put_timeout)
                    finally:
                        self._putters -= 1
                if self._over_budget(size):
                    self._counts["overflowed"] += 1
                    count = self._log_limited("overflow")
                    queued = False
            if queued:
                self._enqueue_locked(op, deps)
                if not deps:
                    self._wake_locked()
        if queued:
            if not self._threads:
                self._start_threads()  # the first sender; it starts the others (see _work)
            return
        if closed:
            self._sweep(LATE_REASON, [op])
            return
        self._spool([op], "the recording queue is over its budget")
        if count:
            logger.warning(LOG_QUEUE_FULL, config.queue_size, config.queue_bytes, count)

    def _enqueue_locked(self, op: Operation, deps: list[Operation] | tuple[()] = ()) -> None:
        seq = self._seq = self._seq + 1
        op.seq = seq
        self._live[seq] = op
        self._bytes += op.size
        self._counts["queued"] += 1
        provides = op.provides
        if provides is not None:
            self._by_key[provides] = op
        session = self._by_session.get(op.session_id)
        if session is None:
            self._by_session[op.session_id] = {op}
        else:
            session.add(op)
        if deps:
            op.deps_left = len(deps)
            for dep in deps:
                if dep.dependents is None:
                    dep.dependents = [op]
                else:
                    dep.dependents.append(op)
        else:
            self._ready.append(op)

    def _admit_locked(self) -> None:
        """Move what `submit` appended to the intake into the queue, in order."""
        intake = self._intake
        while intake:
            self._enqueue_locked(intake.popleft())

    def _over_budget(self, size: int) -> bool:
        config = self._config
        live = len(self._live) + len(self._intake)
        return live >= config.queue_size or (bool(live) and self._bytes + size > config.queue_bytes)

    def _wake_locked(self) -> None:
        """Wake an idle thread; ask for one more while the backlog outgrows the idle ones.

        The thread is started by `_start_threads`, after the lock is released: by a sending
        thread as it takes its next operation (starting a thread waits for it to run, which
        on a busy process costs the GIL's switch interval), by `submit` only when no sending
        thread runs at all.
        """
        sleeping = len(self._sleepers)
        if sleeping:
            self._wake_sleeper()
            if sleeping >= len(self._ready):
                return
        if self._threads + self._to_start >= min(self._limit, self._config.max_concurrency):
            return  # at the ceiling, or Freeplay is failing and the limit came down
        if not self._healthy and self._threads + self._to_start >= 1:
            return  # Freeplay is failing: do not add load, the timers carry the retries
        self._to_start += 1

    def _wake_sleeper(self) -> None:
        """Wake one idle sending thread, if there is one. Needs no lock."""
        try:
            waiter = self._sleepers.popleft()
        except IndexError:
            return
        waiter.release()

    def _wake_sleepers(self) -> None:
        for _ in range(len(self._sleepers)):
            self._wake_sleeper()

    def _sleep_locked(self, wait: float) -> None:
        """Wait, the lock released, until `_wake_sleeper` or `wait` seconds pass.

        The thread registers before it looks at the intake one last time: an operation
        appended after that look finds it in `_sleepers` (see `submit`).
        """
        waiter = threading.Lock()
        waiter.acquire()
        self._sleepers.append(waiter)
        if self._intake:
            with contextlib.suppress(ValueError):  # (a submit may have popped it already)
                self._sleepers.remove(waiter)
            return
        self._lock.release()
        try:
            waiter.acquire(True, max(0.001, wait))
        finally:
            self._lock.acquire()
            with contextlib.suppress(ValueError):
                self._sleepers.remove(waiter)

    def _start_threads(self) -> None:
        if not self._to_start:
            return
        with self._cond:
            count, self._to_start = self._to_start, 0
            self._threads += count
        for started in range(count):
            if not self._start_thread():
                with self._cond:
                    self._threads -= count - started
                return

    def _cancel_locked(self, session_id: str) -> list[Operation]:
        """Cancel what is pending for a session about to be deleted; the delete follows it."""
        pending = list(self._by_session.get(session_id, ()))
        for op in pending:
            op.cancelled = True
        if pending:
            self._wake_sleepers()  # a cancelled one on a timer is let go at once
        return pending

    def cancel_session(self, session_id: str) -> None:
        with self._cond:
            self._admit_locked()
            self._cancel_locked(session_id)

    # -- the sending threads -----------------------------------------------------------

    def _next_locked(self) -> Operation | None:
        """The next operation to attempt, waiting for one; None to let the thread exit.

        A thread takes work only while the requests in flight are under the limit and no
        `Retry-After` pause runs. Past the limit it exits if there are more threads than
        the limit allows (so threads shrink while Freeplay fails), else it waits.
        """
        idle_since = time.monotonic()
        while True:
            if self._intake:
                self._admit_locked()
            now = time.monotonic()
            timers = self._timers
            limit = min(self._limit, self._config.max_concurrency)
            ready = self._ready
            if self._in_flight >= limit:
                if self._threads > limit and (ready or timers):
                    return None  # more threads than the limit: this one goes
                wait = 0.05 if (ready or timers) else self._config.idle_timeout
            elif now < self._not_before and (ready or timers):
                wait = self._not_before - now
            else:
                op = None
                if timers and (timers[0][0] <= now or timers[0][2].cancelled or timers[0][2].state):
                    op = heapq.heappop(timers)[2]
                elif ready:
                    op = ready.popleft()
                if op is not None:
                    self._in_flight += 1
                    if ready and len(self._sleepers) < len(ready):
                        self._wake_locked()  # more waits: wake or ask for another thread
                    return op
                idle_for = self._config.idle_timeout - (now - idle_since)
                if idle_for <= 0 and not timers:
                    return None
                wait = idle_for if not timers else min(max(idle_for, 0.05), timers[0][0] - now)
            self._sleep_locked(wait)

    def _work(self) -> None:
        op: Operation | None = None
        attempts = 0
        handed_over = False
        try:
            while True:
                if attempts >= OPERATIONS_PER_THREAD:
                    attempts = 0
                    if self._start_thread():  # a successor, which takes this one's place
                        handed_over = True
                        return
                with self._cond:
                    if op is not None:
                        self._in_flight -= 1
                        if self._ready or self._timers:
                            self._wake_sleeper()  # a thread held back by the limit may go
                    op = None
                    op = self._next_locked()
                    if op is None:
                        return
                if self._to_start:
                    self._start_threads()
                top_up_ids()  # so that the request path seldom refills the ID pool
                attempts += 1
                try:
                    self._attempt(op)
                except BaseException:  # pragma: no cover - _attempt handles every failure
                    logger.exception(LOG_WORKER_CRASHED)
                    self._spool([op], "recorder error")
        finally:
            with self._cond:
                if op is not None:
                    self._in_flight -= 1
                if not handed_over:  # (a successor keeps this thread's place in the count)
                    self._threads -= 1
                    if self._threads == 0 and (self._ready or self._intake):
                        self._admit_locked()
                        self._wake_locked()
            self._start_threads()

    def _start_thread(self) -> bool:
        """Start a sending thread; False when none can start (Python 3.12 refuses new
        threads once the interpreter is exiting)."""
        try:
            threading.Thread(target=self._work, name="freeplay-recorder", daemon=True).start()
        except RuntimeError:
            return False
        return True

    def _attempt(self, op: Operation) -> None:
        if op.state is not None:
            return  # spooled by a flush that gave up waiting
        if op.cancelled:
            self._finish(op, "cancelled")
            return
        config = self._config
        now = time.monotonic()
        if not op.attempts:
            op.first_attempt_at = now
        op.attempts += 1
        try:
            self._transport.send(op, config.attempt_timeout)
        except Exception as exc:
            failure = self._transport.classify(exc)
        else:
            self._on_success()
            self._finish(op, "sent")
            return
        if not failure.transient:
            self._final_failure(op, failure)
            return
        delay = self._delay(op.attempts, failure)
        self._on_transient_failure(failure, delay)
        spent = time.monotonic() + delay - op.first_attempt_at
        if spent > config.retry_for or (
            config.max_attempts is not None and op.attempts >= config.max_attempts
        ):
            self._spool([op], f"{failure.reason} (after {op.attempts} attempts)")
            return
        if op.cancelled:
            self._finish(op, "cancelled")
            return
        logger.debug(
            LOG_RETRY, op.kind, session_ref(op.session_id), op.attempts, delay, failure.reason
        )
        with self._cond:
            self._counts["retried"] += 1
            heapq.heappush(self._timers, (time.monotonic() + delay, op.seq, op))
            self._wake_sleeper()  # a sleeping thread may have to wake earlier now

    def _delay(self, attempts: int, failure: Failure) -> float:
        config = self._config
        delay = min(float(config.backoff_max), config.backoff_base * 2.0 ** (attempts - 1))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if failure.retry_after is not None:
            delay = max(delay, min(failure.retry_after, config.retry_for))
        return delay

    def _on_transient_failure(self, failure: Failure, delay: float) -> None:
        """Freeplay is failing: halve the requests in flight; pause for a `Retry-After`."""
        with self._cond:
            self._healthy = False
            self._limit = max(1, min(self._limit, self._config.max_concurrency) // 2)
            if failure.retry_after is not None:
                self._not_before = max(self._not_before, time.monotonic() + delay)

    def _on_success(self) -> None:
        now = time.monotonic()
        with self._cond:
            if self._limit < self._config.max_concurrency:
                self._limit += 1
                if self._ready or self._timers:
                    self._wake_locked()  # the limit grew: another request may go
            if not self._healthy:
                # Freeplay answers again: what waits on a timer goes now, and the spool drains.
                self._healthy = True
                # (not before a Retry-After pause ends: _next_locked waits for that)
                self._timers = [(now, seq, op) for _, seq, op in self._timers]
                heapq.heapify(self._timers)
                self._wake_sleepers()
                self._next_drain_check = 0.0
            if self._draining or now < self._next_drain_check:
                return
            self._next_drain_check = now + DRAIN_CHECK_INTERVAL
        self.start_drain()

    def _final_failure(self, op: Operation, failure: Failure) -> None:
        if failure.status in SPOOLED_STATUSES:
            self._spool([op], failure.reason)
            return
        if self._finish(op, "failed"):
            self._log_rejected(op, failure)

    def _log_rejected(self, op: Operation, failure: Failure) -> None:
        """One line per (kind, status) per interval, with the count since the last one."""
        with self._cond:
            count = self._log_limited((op.kind, failure.status))
        if count:
            logger.error(
                LOG_REJECTED,
                count,
                op.kind,
                f"HTTP {failure.status}" if failure.status else "an error",
                session_ref(op.session_id),
                failure.reason,
            )

    def _finish(self, op: Operation, state: str) -> bool:
        """Give `op` its final state, once, and release what follows it."""
        if not self._claim(op, state):
            return False
        self._release(op)
        return True

    def _claim(self, op: Operation, state: str) -> bool:
        with self._cond:
            if op.state is not None:
                return False
            op.state = state
            self._counts[state] += 1
            return True

    def _release(self, op: Operation) -> None:
        """`op` is handled: forget it (a flush may return), release what follows it."""
        spool_after: list[Operation] = []
        with self._cond:
            state = op.state
            if op.seq:
                self._forget_locked(op)
            for dependent in op.dependents or ():
                if state in ("spooled", "lost") and dependent.state is None:
                    spool_after.append(dependent)  # keep the order: it goes after op
                    continue
                dependent.deps_left -= 1
                if dependent.deps_left <= 0 and dependent.state is None:
                    self._ready.append(dependent)
                    self._wake_locked()
            op.dependents = None
            if self._flushers or self._putters:
                self._cond.notify_all()
        self._start_threads()
        if spool_after:
            self._spool(spool_after, "the operation it follows was spooled")

    def _forget_locked(self, op: Operation) -> None:
        if self._live.pop(op.seq, None) is None:
            return
        self._bytes -= op.size
        provides = op.provides
        if provides is not None and self._by_key.get(provides) is op:
            del self._by_key[provides]
        session = self._by_session.get(op.session_id)
        if session is not None:
            session.discard(op)
            if not session:
                del self._by_session[op.session_id]

    # -- sync --------------------------------------------------------------------------

    def deliver(self, op: Operation) -> str | None:
        """Send `op` now, in this thread; spool it if that fails. Never raises.

        Never blocks past `sync_timeout` (plus the time to write the spool): each
        attempt's limit is what is left of it.
        """
        if isinstance(op, DeleteSession):
            self.cancel_session(op.session_id)
        config = self._config
        deadline = time.monotonic() + config.sync_timeout
        failure: Failure | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0.001:
                break
            op.attempts += 1
            try:
                result = self._transport.send(op, min(config.attempt_timeout, remaining))
            except Exception as exc:
                failure = self._transport.classify(exc)
            else:
                self._finish(op, "sent")
                self._on_success()
                return result
            if not failure.transient:
                self._final_failure(op, failure)
                return None
            with self._cond:
                self._healthy = False
            delay = self._delay(op.attempts, failure)
            if time.monotonic() + delay >= deadline or (
                config.max_attempts is not None and op.attempts >= config.max_attempts
            ):
                break
            self._count("retried")
            time.sleep(delay)
        reason = "sync_timeout spent" if failure is None else failure.reason
        self._spool([op], f"{reason} (after {op.attempts} attempts)")
        return None

    # -- spool -------------------------------------------------------------------------

    def _spool(self, ops: Iterable[Operation], reason: str) -> int:
        """Write `ops` (those not yet handled) to the spool. Returns how many were written."""
        path = self._config.spool_path
        claimed: list[Operation] = []
        for op in ops:
            if op.cancelled:
                self._finish(op, "cancelled")
            elif self._claim(op, "spooled"):
                claimed.append(op)
        if not claimed:
            return 0
        try:
            return self._write_spool(path, claimed, reason)
        finally:
            for op in claimed:  # only now: a flush waiting for them finds them written
                self._release(op)

    def _write_spool(self, path: str, claimed: list[Operation], reason: str) -> int:
        try:
            _spool.append_lines(
                path, [_spool.spool_line(op, self.api_base, reason) for op in claimed]
            )
        except (OSError, TypeError, ValueError) as exc:
            with self._cond:
                for op in claimed:
                    op.state = "lost"
                self._counts["spooled"] -= len(claimed)
                self._counts["lost"] += len(claimed)
                count = self._log_limited("lost", len(claimed))
            if count:
                logger.error(LOG_SPOOL_FAILED, count, path, exc)
            return 0
        with self._cond:
            count = self._log_limited("spooled", len(claimed))
            self._next_drain_check = 0.0
        if count:
            logger.warning(LOG_SPOOLED, count, reason, path)
        return len(claimed)

    def start_drain(self) -> None:
        """Drain the spool in a background thread (if there is one and none runs)."""
        path = self._config.spool_path
        if not (os.path.exists(path) or _has_leftovers(path)):
            return
        with self._cond:
            if self._draining or self._exiting:
                return
            self._draining = True
        threading.Thread(target=self._drain, name="freeplay-recorder-drain", daemon=True).start()

    def _drain(self) -> None:
        try:
            result = _spool.drain(
                self._config.spool_path,
                self._drain_send,
                api_base=self.api_base,
                concurrency=max(1, self._config.max_concurrency // 2),
            )
        except Exception:
            logger.exception("freeplay_integrations: draining the spool failed")
            return
        finally:
            with self._cond:
                self._draining = False
                self._cond.notify_all()  # (`close` may wait for it)
        if result.sent or result.failed or result.unreadable:
            self._count("drained", result.sent)
            logger.info(
                LOG_DRAINED,
                self._config.spool_path,
                result.sent,
                result.failed,
                result.kept,
                result.unreadable,
            )

    def _drain_send(self, op: Operation) -> Outcome:
        config = self._config
        deadline = time.monotonic() + min(config.retry_for, 30.0)
        while True:
            if self._exiting:
                return "retry"  # kept in the spool, for the next process
            try:
                self._transport.send(op, config.attempt_timeout)
            except Exception as exc:
                failure = self._transport.classify(exc)
            else:
                return "sent"
            if not failure.transient:
                if failure.status in SPOOLED_STATUSES:
                    return "retry"
                self._log_rejected(op, failure)
                return "failed"
            delay = min(1.0, self._delay(1, failure))
            if time.monotonic() + delay > deadline:
                with self._cond:
                    self._healthy = False
                return "retry"
            time.sleep(delay)

    # -- flush -------------------------------------------------------------------------

    def _target(self) -> int:
        with self._cond:
            self._admit_locked()
            return self._seq

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is handled; spool what is left at `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        settled = self._flush_route(deadline)
        return self._flush(self._target(), deadline) and settled

    def _flush_route(self, deadline: float | None) -> bool:
        flush = getattr(self._route, "flush", None)
        return bool(flush(deadline)) if callable(flush) else True

    def _reached(self, target: int) -> bool:
        live = self._live
        return not live or next(iter(live)) > target

    def _flush(self, target: int, deadline: float | None) -> bool:
        with self._cond:
            if self._wait_locked(lambda: self._reached(target), deadline):
                return True
            left = [op for seq, op in self._live.items() if seq <= target]
        # What is in flight may still arrive: the spool replays it idempotently.
        self._spool(left, "not delivered before the flush timeout")
        return False

    def _wait_locked(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Wait (the lock held, as a flusher: handled operations notify) until `done()` or
        `deadline`; returns `done()`."""
        self._flushers += 1
        try:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            return self._cond.wait_for(done, remaining)
        finally:
            self._flushers -= 1

    def close(self, deadline: float | None) -> bool:
        """The process exits: deliver until `deadline`, then spool what is left.

        What is submitted meanwhile is sent too: a server's daemon worker threads (waitress)
        go on serving through the exit flush. After it, whatever is still held goes to the
        spool, and whatever is submitted later goes there at once, in the submitting
        thread: nothing recorded after the flush stays in memory to die with the process.
        A drain of the spool stops sending and puts back what it holds (a drain cut short
        by the exit would leave it under another name). Returns True when everything was
        delivered. A route settles first (`Route`): what it hands back is delivered here.
        """
        settled = self._flush_route(deadline)
        with self._cond:
            self._exiting = True
            done = self._wait_locked(
                lambda: not (self._live or self._intake or self._draining), deadline
            )
            self._closed = True
        swept = self._sweep("not delivered before the shutdown timeout")
        return swept == 0 and done and settled

    def _sweep(self, reason: str, ops: Iterable[Operation] = ()) -> int:
        """Spool everything held (then `ops`); returns how many were written."""
        with self._cond:
            self._admit_locked()
            held = [*self._live.values(), *ops]
        return self._spool(held, reason)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._intake = deque()
        self._sleepers = deque()
        self._ready = deque()
        self._timers = []
        self._live = {}
        self._by_key = {}
        self._by_session = {}
        self._bytes = 0
        self._threads = self._flushers = self._putters = self._to_start = 0
        self._in_flight = 0
        self._limit = self._config.max_concurrency
        self._not_before = 0.0
        self._draining = False
        self._exiting = self._closed = False
        self._counts = dict.fromkeys(self._counts, 0)


def _has_leftovers(path: str) -> bool:
    import glob

    return bool(glob.glob(glob.escape(path) + ".draining-*"))


# -- the registry: one recorder per client ---------------------------------------------

_registry: weakref.WeakKeyDictionary[Any, Recorder] = weakref.WeakKeyDictionary()
_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()
_registry_lock = threading.Lock()
_defaults: dict[str, Any] = {}
_reported: set[str] = set()
#: Called once when the first recorder is created (the process hooks install themselves).
on_first_recorder: list[Any] = []


def default_config() -> RecorderConfig:
    options = dict(_defaults)
    spool_path = (
        options.pop("spool_path", None)
        or os.environ.get(ENV_SPOOL_PATH)
        or _spool.default_spool_path()
    )
    return RecorderConfig(spool_path=os.path.abspath(spool_path), **options).validate()


def recorder_for(client: Freeplay) -> Recorder:
    """The recorder of `client`, created on first use (with `configure_recording` defaults)."""
    recorder = _registry.get(client)
    if recorder is not None:
        return recorder
    with _registry_lock:
        recorder = _registry.get(client)
        if recorder is None:
            for hook in on_first_recorder:
                hook()
            recorder = Recorder(client, default_config())
            _registry[client] = recorder
            _recorders.add(recorder)
        else:
            return recorder
    _start_up(recorder)
    return recorder


def _start_up(recorder: Recorder) -> None:
    """Report an unwritable spool (once per path), and drain what an earlier process left."""
    path = recorder.config.spool_path
    if path not in _reported:
        _reported.add(path)
        problem = _spool.check_spool(path)
        if problem is not None:
            logger.error(LOG_SPOOL_UNWRITABLE, path, problem)
            return
    recorder.start_drain()


def configure_recording(
    client: Freeplay | None = None,
    *,
    spool_path: str | os.PathLike[str] | None = None,
    queue_size: int | None = None,
    queue_bytes: int | None = None,
    max_concurrency: int | None = None,
    attempt_timeout: float | None = None,
    retry_for: float | None = None,
    max_attempts: int | None = None,
    backoff_base: float | None = None,
    backoff_max: float | None = None,
    put_timeout: float | None = None,
    sync_timeout: float | None = None,
    shutdown_timeout: float | None = None,
    idle_timeout: float | None = None,
    via: object | None = None,
    handle_sigterm: bool | None = None,
    workers: int | None = None,
) -> None:
    """Tune how recordings are delivered. Settings left as None are unchanged.

    With `client`, only that client's recorder changes; without, the process-wide
    defaults change, for every recorder (existing ones included).

    - `spool_path`: the spool file (default `$FREEPLAY_SPOOL_PATH`, else
      `$XDG_STATE_HOME/freeplay-integrations/spool.jsonl`, `~/.local/state/...` without it).
    - `queue_size` (10,000) and `queue_bytes` (64 MiB): what may wait in memory; past
      either, new operations go to the spool. `put_timeout` (0 s): how long `record()`
      may wait for room first.
    - `max_concurrency` (64): the most requests in flight (and connections kept).
      `workers=` is its deprecated name.
    - `attempt_timeout` (10 s): time limit of one attempt, connecting included.
    - `retry_for` (300 s): how long transient failures are retried before spooling;
      `backoff_base` (0.5 s) and `backoff_max` (30 s) shape the waits (jittered; a
      `Retry-After` is honoured). `max_attempts` (none) also caps the attempts.
    - `sync_timeout` (15 s): in `recording="sync"` mode, the most time a call blocks.
    - `shutdown_timeout` (5 s): how long process exit (and every shutdown hook) waits.
    - `idle_timeout` (30 s): a sending thread idle this long exits.
    - `via`: deliver through another route (a Celery app, or an object with
      `submit(op) -> bool`); `False` goes back to in-process delivery (None: unchanged).
    - `handle_sigterm`: True installs the SIGTERM handler (see `install_sigterm_handler`).
    """
    if workers is not None:
        warnings.warn(
            "configure_recording(workers=...) is deprecated; use max_concurrency=...",
            DeprecationWarning,
            stacklevel=2,
        )
        if max_concurrency is None:
            max_concurrency = workers
    if handle_sigterm:
        from ._hooks import install_sigterm_handler

        install_sigterm_handler()
    changes: dict[str, Any] = {
        name: value
        for name, value in (
            ("spool_path", None if spool_path is None else os.path.abspath(spool_path)),
            ("queue_size", queue_size),
            ("queue_bytes", queue_bytes),
            ("max_concurrency", max_concurrency),
            ("attempt_timeout", attempt_timeout),
            ("retry_for", retry_for),
            ("max_attempts", max_attempts),
            ("backoff_base", backoff_base),
            ("backoff_max", backoff_max),
            ("put_timeout", put_timeout),
            ("sync_timeout", sync_timeout),
            ("shutdown_timeout", shutdown_timeout),
            ("idle_timeout", idle_timeout),
            ("via", via),
        )
        if value is not None
    }
    if client is not None:
        recorder_for(client).configure(**changes)
        return
    with _registry_lock:
        dataclasses.replace(default_config(), **changes).validate()
        _defaults.update(changes)
        recorders = list(_recorders)
    for recorder in recorders:
        recorder.configure(**changes)


def recorder_stats(client: Freeplay | None = None) -> RecorderStats:
    """Counters of `client`'s recorder, or the sum over every recorder of the process."""
    if client is not None:
        recorder = _registry.get(client)
        return RecorderStats() if recorder is None else recorder.stats()
    total = RecorderStats()
    for recorder in list(_recorders):
        total = total + recorder.stats()
    return total


def flush(timeout: float | None = None) -> bool:
    """Wait until every background recording so far is delivered or finally failed.

    With a `timeout` (seconds), what is still queued or in flight when it expires is
    written to the spool. Returns True when nothing is left (nothing had to be spooled).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    recorders = list(_recorders)
    targets = [(recorder, recorder._target()) for recorder in recorders]
    complete = True
    for recorder, target in targets:
        complete = recorder._flush(target, deadline) and complete
    return complete


def close(timeout: float) -> bool:
    """At exit: `Recorder.close` for every recorder, within one `timeout` for all."""
    deadline = time.monotonic() + timeout
    complete = True
    for recorder in list(_recorders):
        complete = recorder.close(deadline) and complete
    return complete


def shutdown_timeout() -> float:
    """The one shutdown timeout: the largest configured over the process's recorders."""
    recorders = list(_recorders)
    if not recorders:
        return default_config().shutdown_timeout
    return max(recorder.config.shutdown_timeout for recorder in recorders)


def after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for recorder in list(_recorders):
        recorder._after_fork()
