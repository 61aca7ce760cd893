"""The Celery route: recordings travel to a Celery worker as JSON task messages.

Opt in where the Celery app is created, in the web process and in the worker::

    from celery import Celery
    from freeplay_integrations import configure_recording
    from freeplay_integrations.celery import register_delivery_task

    app = Celery("proj", broker="redis://localhost:6379/0")
    register_delivery_task(app)          # the worker: a task that delivers with the SDK
    configure_recording(via=app)         # the web process: record() publishes that task

Web side (`CeleryRoute.submit`, on the request path): the operation's own JSON form is the
task's only argument, published with `serializer="json"`. On a Redis broker the message is
written with one `LPUSH` (what kombu's Redis transport writes, without Celery's publish
machinery), and `record()` returns once it cannot be lost to a web process killed right
after: over Redis's unix socket (`redis+socket:///path`) once the kernel holds the command
in Redis's receive queue, its reply read later; over TCP
(`redis://`, `rediss://`) once Redis has replied (see `_RedisLpush` for why). That LPUSH
is the request path's cost, so it is kept short: the message's constant parts are
serialised once per route (`_Envelope`), and the command goes over connections the route
keeps (no pool lock or health check per call). Other brokers go through
`send_task(..., retry=False)`. When the broker cannot be reached within
`publish_timeout`, `submit` returns False (the recorder then delivers in-process, with its
spool) and the broker is not tried again for `retry_interval` seconds, so a dead broker
costs one timeout, not one per recording. A message written over the unix socket that
Redis then refuses, or does not confirm within `publish_timeout`, is handed back to the
recorder (`CeleryRoute.attach`) and delivered in-process the same way; the recorder's
`flush()` and exit flush wait for Redis's confirmations first (`CeleryRoute.flush`).

Worker side (`register_delivery_task`): `acks_late=True`, `reject_on_worker_lost=True`, so a
worker killed mid-delivery leaves the message to be delivered again (at once when a pool
process dies; after the broker's `visibility_timeout` when the whole worker dies).
Transient failures (connection errors, timeouts, 408, 425, 429, 5xx) are retried by
Celery's `autoretry_for` with `retry_backoff`; on the last allowed attempt, or on 401/403,
the operation goes to the worker's spool. Any other 4xx is dropped with one log line.
Completion and trace IDs are fixed when `record()` runs, so a redelivery never stores a
second copy (provided the server deduplicates by ID, as the local Freeplay does).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast
from urllib.parse import parse_qs, urlsplit

from celery import Celery

from ._config import build_client
from ._errors import ConfigurationError
from ._ids import new_session_id

# == adapter: every use of the recorder's internals is in this section ==================
from ._recording import Operation, Recorder, SdkTransport, operation_from_json, recorder_for
from ._recording._operations import session_ref
from ._recording._scheduler import SPOOLED_STATUSES


def _op_json(op: Operation) -> str:
    """`op` as the JSON text of a mapping that includes its `kind`."""
    return op.to_json_text()


def _op_from_json(data: Mapping[str, Any]) -> Operation:
    """The operation `_op_json` wrote; ValueError if it is not one."""
    return operation_from_json(data)


class _Transport:
    """Sends one operation once, through the SDK, within the recorder's attempt limit, and
    spools what the worker gives up on."""

    def __init__(self, client: Any) -> None:
        self._recorder = recorder_for(client)
        self._sdk: SdkTransport = self._recorder.transport
        self.classify = self._sdk.classify

    def send(self, op: Operation) -> str | None:
        return self._sdk.send(op, self._recorder.config.attempt_timeout)

    def spool(self, op: Operation, reason: str) -> bool:
        return self._recorder._spool([op], reason) == 1


# == end of the adapter ==================================================================

if TYPE_CHECKING:
    from celery import Task
    from freeplay import Freeplay

__all__ = [
    "DELIVERY_TASK",
    "LOG_BROKER_DOWN",
    "LOG_DROPPED",
    "LOG_SPOOLED",
    "LOG_UNREADABLE",
    "CeleryRoute",
    "TransientDeliveryError",
    "register_delivery_task",
    "short_ref",
]

logger = logging.getLogger("freeplay_integrations.celery")

#: Name of the delivery task.
DELIVERY_TASK = "freeplay_integrations.deliver"

# Log messages (tests look for them). Sessions appear as a short reference, never in full.
LOG_BROKER_DOWN = (
    "freeplay_integrations: the Celery broker is unreachable (%s); recording in-process, "
    "with the spool, for the next %.0f s"
)
LOG_DROPPED = "freeplay_integrations: Freeplay rejected a %s for session %s; dropped: %s"
LOG_SPOOLED = "freeplay_integrations: a %s for session %s went to the worker's spool: %s"
LOG_UNREADABLE = "freeplay_integrations: task %s does not carry an operation; dropped: %s"
LOG_NOT_HANDED_BACK = (
    "freeplay_integrations: %d operations written to the broker were not confirmed (%s), "
    "and this CeleryRoute has no recorder to hand them back to"
)

#: Defaults of `register_delivery_task`: retries, and the longest wait between two.
DEFAULT_MAX_RETRIES = 12
DEFAULT_RETRY_BACKOFF_MAX = 300
#: Defaults of `CeleryRoute`: the time limit of a publish (connect included), and how long
#: the broker is left alone after it failed.
DEFAULT_PUBLISH_TIMEOUT = 0.1
DEFAULT_RETRY_INTERVAL = 5.0
#: Default of `CeleryRoute(reply_spin=...)`: how long, in seconds, a publish polls for
#: Redis's reply before its thread sleeps on it (see `_RedisLpush`), and the most allowed.
#: A local Redis replies in 15-40 µs; a thread woken from sleep on a VM whose idle CPUs
#: halt takes tens of µs more. At most this much CPU is spent per publish.
DEFAULT_REPLY_SPIN = 50e-6
MAX_REPLY_SPIN = 0.001

_REDIS_SCHEMES = frozenset({"redis", "rediss"})
_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


#: What logs show of a session (the recorder's short, non-reversible reference).
short_ref = session_ref


class TransientDeliveryError(Exception):
    """A delivery that may succeed later: the delivery task's `autoretry_for`."""


# -- web side -------------------------------------------------------------------------


class CeleryRoute:
    """`configure_recording(via=app)`: publish each operation as a `DELIVERY_TASK` message.

    `submit(op)` returns True once the broker holds the message (over a unix socket: once
    the kernel holds it for Redis, confirmed later), False (nothing raised) when it cannot
    be reached: the recorder then delivers `op` in-process. Counters: `published`
    (confirmed by the broker), `refused` (declined by `submit`), `handed_back` (written,
    then refused or not confirmed by Redis, and handed back to the recorder).

    Options (pass `via=CeleryRoute(app, ...)` to set them): `queue` (default: where the
    app routes `DELIVERY_TASK`); `publish_timeout`, seconds a publish may take, connect
    included; `retry_interval`, seconds the broker is left alone after a failure;
    `reply_spin`, seconds a publish to Redis polls for the reply before its thread sleeps on
    it (0: never polls; only over plain TCP: not over TLS, a unix socket or other brokers).
    Their defaults are the `DEFAULT_*` constants above.
    """

    def __init__(
        self,
        app: Celery,
        recorder: Recorder | None = None,
        *,
        queue: str | None = None,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        reply_spin: float = DEFAULT_REPLY_SPIN,
    ) -> None:
        if not isinstance(app, Celery):
            raise TypeError(f"CeleryRoute() takes a Celery app, not {app!r}.")
        timeouts = (("publish_timeout", publish_timeout), ("retry_interval", retry_interval))
        for name, value in timeouts:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigurationError(
                    f"CeleryRoute({name}=...) must be a number of seconds > 0, not {value!r}."
                )
        if (
            isinstance(reply_spin, bool)
            or not isinstance(reply_spin, (int, float))
            or not 0 <= reply_spin <= MAX_REPLY_SPIN
        ):
            raise ConfigurationError(
                "CeleryRoute(reply_spin=...) must be a number of seconds from 0 (never spin) "
                f"to {MAX_REPLY_SPIN:g}, not {reply_spin!r}."
            )
        self._app = app
        self._recorder = recorder
        self._publish_timeout = float(publish_timeout)
        self._retry_interval = float(retry_interval)
        self._queue = queue or _queue_of(app)
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: Threads handing operations back to the recorder: `submit` declines theirs.
        self._handing_back: set[int] = set()
        self._sent_tasks = 0
        self.refused = 0
        self.handed_back = 0
        self._lpush = lpush = _redis_lpush(
            app, self._queue, self._publish_timeout, float(reply_spin), self._hand_back
        )
        if lpush is not None:
            envelope = _Envelope(self._queue, f"{os.getpid()}@{socket.gethostname()}")
            message = envelope.message

            def publish(op: Operation, op_json: str) -> None:
                lpush(message(op_json, op.kind), op)

            self._publish: Callable[[Operation, str], None] = publish
        else:
            self._publish = self._send_task

    def __repr__(self) -> str:
        return f"<CeleryRoute queue={self._queue!r} published={self.published}>"

    @property
    def published(self) -> int:
        """Messages the broker confirmed it holds."""
        lpush = self._lpush
        return self._sent_tasks if lpush is None else lpush.confirmed

    def submit(self, op: Operation) -> bool:
        """Publish `op`; False when the broker is unreachable (or was, a moment ago)."""
        if self._handing_back and threading.get_ident() in self._handing_back:
            return False
        if self._down_until and time.monotonic() < self._down_until:
            self.refused += 1
            return False
        try:
            text = _op_json(op)
        except (TypeError, ValueError):
            return False  # not JSON: the in-process route handles (and reports) it
        try:
            self._publish(op, text)
        except _Backlog:
            self.refused += 1
            return False
        except Exception as exc:
            self._broker_down(_error_text(exc))
            with self._lock:
                self.refused += 1
            return False
        self._down_until = 0.0
        return True

    def attach(self, recorder: Recorder) -> None:
        """The recorder this route hands back to what it took and could not publish."""
        self._recorder = recorder

    def flush(self, deadline: float | None = None) -> bool:
        """Wait until Redis has confirmed every message written so far (pipelined links);
        at `deadline` (a `time.monotonic()` value), hand back what it has not confirmed.
        True when everything was confirmed."""
        lpush = self._lpush
        return True if lpush is None else lpush.settle(deadline)

    def _broker_down(self, reason: str) -> None:
        with self._lock:
            first = time.monotonic() >= self._down_until
            self._down_until = time.monotonic() + self._retry_interval
        if first:
            logger.warning(LOG_BROKER_DOWN, reason, self._retry_interval)

    def _hand_back(self, ops: list[Operation], reason: str) -> None:
        """Operations written to Redis that it refused, or did not confirm before its
        connection was lost or timed out: the broker is left alone for `retry_interval`, and
        `ops` go to the recorder's in-process route (a message that did reach Redis is then
        delivered twice, which the IDs make harmless)."""
        self._broker_down(reason)
        recorder = self._recorder
        with self._lock:
            self.handed_back += len(ops)
        if recorder is None:  # a route used on its own, never attached to a recorder
            logger.error(LOG_NOT_HANDED_BACK, len(ops), reason)
            return
        ident = threading.get_ident()
        self._handing_back.add(ident)
        try:
            for op in ops:
                recorder.submit(op)
        finally:
            self._handing_back.discard(ident)

    def _send_task(self, op: Operation, op_json: str) -> None:
        """Other brokers: Celery's own publish, without its retries."""
        self._app.send_task(
            DELIVERY_TASK,
            args=(json.loads(op_json),),
            queue=self._queue,
            serializer="json",
            retry=False,
            ignore_result=True,
            argsrepr=f"({op.kind!r},)",
        )
        self._sent_tasks += 1


def _queue_of(app: Celery) -> str:
    route = app.amqp.router.route({}, DELIVERY_TASK, (), {})
    queue = route.get("queue")
    name = getattr(queue, "name", queue)
    return str(name or app.conf.task_default_queue)


def _redis_lpush(
    app: Celery,
    queue: str,
    timeout: float,
    reply_spin: float,
    hand_back: Callable[[list[Operation], str], None],
) -> _RedisLpush | None:
    """An `_RedisLpush` onto `queue`'s list when `app`'s broker is Redis, else None.

    Reads kombu's parsed broker URL: `redis://` and `rediss://` (host, port, db, user,
    password), and `redis+socket:///path/to/redis.sock` (a unix-domain socket; the db in
    `?virtual_host=N`), whose links are pipelined (`_Replies`).
    """
    connection = app.connection_for_write()
    try:
        driver = connection.transport.driver_type
        if driver not in _REDIS_SCHEMES:
            return None
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options = dict(app.conf.broker_transport_options or {})
        host = connection.hostname or "localhost"
        address: dict[str, Any]
        if host.startswith("socket://"):  # `redis+socket://`: kombu keeps the URL as the host
            url = urlsplit(host)
            query = parse_qs(url.query)
            address = {
                "unix_socket_path": url.path,
                "username": url.username or connection.userid or None,
                "password": url.password or connection.password or None,
            }
            virtual_host = (query.get("virtual_host") or ["0"])[0]
        else:
            address = {
                "host": host,
                "port": connection.port or 6379,
                "username": connection.userid or None,
                "password": connection.password or None,
                "ssl": driver == "rediss" or bool(connection.ssl),
            }
            virtual_host = str(connection.virtual_host or "0")
        virtual_host = virtual_host.strip("/") or "0"
        client = redis.Redis(
            db=int(virtual_host) if virtual_host.isdigit() else 0,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            **address,
        )
        key = str(options.get("global_keyprefix", "")) + queue
        replies = _Replies(timeout, hand_back) if "unix_socket_path" in address else None
        return _RedisLpush(client, key, timeout, reply_spin, replies)
    finally:
        connection.release()


class _Envelope:
    """kombu's Redis message for one `DELIVERY_TASK`, its constant parts serialised once.

    `message(op_json, kind)` is the JSON text kombu's Redis transport writes for
    `send_task(DELIVERY_TASK, args=(op,), serializer="json", ignore_result=True)`: the
    body (args, kwargs, embed) in base64, Celery's protocol-2 headers, and one new UUID as
    the task's ID, root ID, correlation ID and delivery tag. Only the body, that UUID and
    the `argsrepr` change from one message to the next: they are put into a format made
    once (base64 and UUIDs need no JSON escaping).
    """

    def __init__(self, queue: str, origin: str) -> None:
        marks = {name: f"\x00{name}" for name in ("body", "id", "argsrepr")}
        message = {
            "body": marks["body"],
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {
                "lang": "py",
                "task": DELIVERY_TASK,
                "id": marks["id"],
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": marks["id"],
                "parent_id": None,
                "argsrepr": marks["argsrepr"],
                "kwargsrepr": "{}",
                "origin": origin,
                "ignore_result": True,
                "replaced_task_nesting": 0,
                "stamped_headers": None,
                "stamps": {},
            },
            "properties": {
                "correlation_id": marks["id"],
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": marks["id"],
            },
        }
        text = json.dumps(message).replace("%", "%%")  # ASCII: json.dumps escapes the rest
        for name, mark in marks.items():
            text = text.replace(json.dumps(mark), f"%({name})s")
        self._format = text.encode("ascii")
        self._argsrepr: dict[str, bytes] = {}

    def message(self, op_json: str, kind: str) -> bytes:
        argsrepr = self._argsrepr.get(kind)
        if argsrepr is None:
            argsrepr = self._argsrepr[kind] = json.dumps(f"({kind!r},)").encode("ascii")
        body = f"[[{op_json}], {{}}, {_EMBED}]".encode()
        values = {
            b"body": b'"' + base64.b64encode(body) + b'"',
            b"id": b'"' + new_session_id().encode("ascii") + b'"',
            b"argsrepr": argsrepr,
        }
        return self._format % values


class _RedisLpush:
    """`LPUSH key value` over connections of its own.

    Each call takes an idle connection (or opens one) without a pool's lock and health
    check, and sends one command packed here; the connection is kept only while it works.
    A kept connection that turns out closed (the server restarted or dropped it while
    idle) is replaced once, at once; any other failure raises. A forked child starts with
    no connections (its parent's sockets are not its own).

    How a call ends depends on the socket:

    - a unix socket (`replies` given): the call returns once the kernel holds the whole
      command in Redis's receive queue (`_PipeLink`). Bytes written to a unix socket stay
      in the receiving end's queue when the sender dies, so a process killed right after
      the call loses nothing. Redis's replies are read later: by the next call on the same
      connection, without waiting, or by `replies`' thread for a connection left alone.
      What Redis refuses, or does not confirm within `timeout` (the connection lost, or
      Redis hung), is handed back to the recorder.
    - TCP: the call returns once Redis has replied (`_Link`). Waiting is what keeps a hard
      kill from losing data: a TCP socket closed with a reply still unread sends a reset,
      and Linux then discards what Redis had received and not yet read (measured: 99 of
      101 commands lost that way, none when the reply had been read).

    redis-py opens each connection (connect, AUTH, SELECT, TLS); the commands and replies
    then go over the connection's socket directly, non-blocking (`_Socket`). Over TCP, the
    reply is polled for up to `reply_spin` seconds before the thread sleeps on it: on a
    host whose idle CPUs halt (most VMs), waking a sleeping thread costs tens of µs, more
    than a local Redis takes to reply. A TLS connection, or a platform without `poll`, is
    read through redis-py, blocking.
    """

    def __init__(
        self, client: Any, key: str, timeout: float, reply_spin: float, replies: _Replies | None
    ) -> None:
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        # redis.Redis() leaves the connect timeout out for a unix socket: it is set here.
        self._connection_kwargs = {**pool.connection_kwargs, "socket_connect_timeout": timeout}
        self._timeout = timeout
        self._spin_ns = round(reply_spin * 1e9)
        key_bytes = key.encode()
        self._head = b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n$" % (len(key_bytes), key_bytes)
        self._idle: deque[_Link | _PipeLink] = deque()
        self._replies = replies
        self._pid = os.getpid()
        #: Messages confirmed by Redis over TCP (pipelined links count in `_Replies`).
        self._confirmed = 0
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._closed_errors = (RedisConnectionError, ConnectionError)

    @property
    def confirmed(self) -> int:
        replies = self._replies
        return self._confirmed + (0 if replies is None else replies.confirmed)

    def __call__(self, value: bytes, op: Operation) -> None:
        command = b"%s%d\r\n%s\r\n" % (self._head, len(value), value)
        if self._pid != os.getpid():
            self._idle, self._pid = deque(), os.getpid()
            if self._replies is not None:
                self._replies = self._replies.for_child()
        try:
            link = self._idle.pop()
        except IndexError:
            pass
        else:
            try:
                self._send(link, command, op)
                return
            except self._closed_errors:
                pass
        self._send(self._open(), command, op)

    def settle(self, deadline: float | None) -> bool:
        replies = self._replies
        return True if replies is None else replies.settle(deadline)

    def _open(self) -> _Link | _PipeLink:
        connection = self._connection_class(**self._connection_kwargs)
        connection.connect()
        replies = self._replies
        if replies is not None:
            sock = _raw_socket(connection)
            if sock is not None:
                return replies.add(_PipeLink(connection, sock, self._timeout))
        return _Link(connection, self._timeout, self._spin_ns)

    def _send(self, link: _Link | _PipeLink, command: bytes, op: Operation) -> None:
        try:
            said = link.lpush(command, op)
        except _Backlog:
            self._idle.append(link)
            raise
        except BaseException as exc:
            if isinstance(link, _PipeLink) and self._replies is not None:
                self._replies.lose(link, _error_text(exc))
            else:
                link.connection.disconnect()
            raise
        self._idle.append(link)
        if type(link) is _Link:
            self._confirmed += 1
        elif said is not None and self._replies is not None:
            self._replies.heard(cast("_PipeLink", link), said)


#: Bytes read at a time: an LPUSH reply is `:<length of the list>\r\n`, an error one line.
_REPLY_CHUNK = 4096
#: Bytes of replies `_Replies` reads at a time (each `:N\r\n`, a few bytes).
_REPLIES_CHUNK = 65536
#: Messages, and bytes, a pipelined connection may hold unconfirmed (the operations stay in
#: memory until then); past either, `record()` delivers in-process.
MAX_UNCONFIRMED = 10_000
MAX_UNCONFIRMED_BYTES = 16 * 1024 * 1024
#: Seconds after which `_Replies` reads the replies a connection's writers left unread
#: (it wakes this often while any are due; a thread taking the GIL once per reply would
#: slow the recording threads), and how long it sleeps when none are due (a message written
#: meanwhile is found overdue this much late, at most, if Redis never replies).
_CONFIRM_EVERY = 0.02
_REPLIES_IDLE = 0.2


class _Backlog(Exception):
    """A pipelined connection holds `MAX_UNCONFIRMED` messages: this one goes in-process."""


def _raw_socket(connection: Any) -> socket.socket | None:
    """The plain socket of a connected redis-py connection, or None (TLS, or no `poll`)."""
    # == adapter: redis-py keeps the connected socket as `_sock` (every version since 2).
    sock = getattr(connection, "_sock", None)
    if type(sock) is socket.socket and hasattr(select, "poll"):
        return sock
    return None


class _Link:
    """One connected redis-py connection: `lpush` sends a command and waits for its reply."""

    def __init__(self, connection: Any, timeout: float, spin_ns: int) -> None:
        self.connection = connection
        sock = _raw_socket(connection)
        self._socket = None if sock is None else _Socket(sock, timeout, spin_ns)

    def lpush(self, command: bytes, op: Operation) -> None:
        """Send `command` and wait for Redis's reply (raises on an error reply)."""
        if self._socket is None:
            self.connection.send_packed_command((command,), check_health=False)
            self.connection.read_response()
            return
        reply = self._socket.exchange(command)
        if not reply.startswith(b":"):
            from redis.exceptions import ResponseError

            raise ResponseError(reply.decode("utf-8", "replace").strip().lstrip("-"))


class _PipeLink:
    """One connected redis-py connection over a unix socket. `lpush` writes the command,
    then reads (without waiting) the replies that have come by then, and matches them, in
    order, with `unconfirmed` (when each was written, its size, and the operation): a thread
    that records often confirms its earlier messages itself, and `_Replies` reads only
    for connections left alone. Both return what the replies said (`_Said`, or None)."""

    def __init__(self, connection: Any, sock: socket.socket, timeout: float) -> None:
        self.connection = connection
        self.unconfirmed: deque[tuple[int, int, Operation]] = deque()
        #: Bytes written and bytes confirmed; messages confirmed.
        self.written = self.confirmed = self.acks = 0
        self.partial = b""
        self.lost = False
        #: Held while writing or reading, and while `_Replies.lose` takes what is left.
        self.lock = threading.Lock()
        self.socket = _Socket(sock, timeout, 0)

    def lpush(self, command: bytes, op: Operation) -> _Said | None:
        unconfirmed = self.unconfirmed
        with self.lock:
            if self.lost:
                raise ConnectionResetError("the connection to Redis was lost")
            size = len(command)
            if (
                len(unconfirmed) >= MAX_UNCONFIRMED
                or self.written - self.confirmed + size > MAX_UNCONFIRMED_BYTES
            ):
                raise _Backlog
            unconfirmed.append((time.perf_counter_ns(), size, op))
            try:
                self.socket.write(command)
            except BaseException:
                unconfirmed.pop()  # not (wholly) written: the caller delivers it
                raise
            self.written += size
            return self._read_locked()

    def read(self) -> _Said | None:
        with self.lock:
            return None if self.lost else self._read_locked()

    def _read_locked(self) -> _Said | None:
        try:
            data = self.socket.read(_REPLIES_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # ConnectionResetError when Redis closed it
            return _Said((), _error_text(exc), lost=True)
        lines = (self.partial + data).split(b"\r\n")
        self.partial = lines.pop()
        refused: list[Operation] = []
        reason = ""
        for line in lines:
            try:
                _, size, op = self.unconfirmed.popleft()
            except IndexError:
                return _Said(refused, f"a reply to no command: {line[:80]!r}", lost=True)
            self.confirmed += size
            if line[:1] == b":":
                self.acks += 1
            else:
                refused.append(op)
                reason = "Redis refused the LPUSH: " + line.decode("utf-8", "replace").lstrip("-")
        return _Said(refused, reason, lost=False) if refused else None


class _Said(NamedTuple):
    """What replies said: operations Redis refused, why, and whether the link is lost."""

    refused: Sequence[Operation]
    reason: str
    lost: bool


class _Replies:
    """The pipelined connections of one `_RedisLpush`, and a daemon thread (started with
    the first) that confirms what their writers have left unread for `_CONFIRM_EVERY`.

    An error reply (`-OOM`, `-READONLY`, `-WRONGTYPE`, ...), a connection closed or
    failing, or a message left unconfirmed for `timeout` seconds hands the operations
    concerned back (`hand_back(ops, reason)`, which delivers them in-process).
    `settle(deadline)` waits until everything written so far is confirmed, and at
    `deadline` hands back the rest.
    """

    def __init__(self, timeout: float, hand_back: Callable[[list[Operation], str], None]) -> None:
        self._timeout = timeout
        self._timeout_ns = round(timeout * 1e9)
        self._hand_back = hand_back
        self._links: dict[int, _PipeLink] = {}
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._lost_acks = 0

    @property
    def confirmed(self) -> int:
        return self._lost_acks + sum(link.acks for link in list(self._links.values()))

    def for_child(self) -> _Replies:
        """A forked child's own (its parent's connections and thread are not its own)."""
        return _Replies(self._timeout, self._hand_back)

    def add(self, link: _PipeLink) -> _PipeLink:
        self._links[id(link)] = link
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    thread = threading.Thread(
                        target=self._run, name="freeplay-celery-replies", daemon=True
                    )
                    thread.start()
                    self._thread = thread
        return link

    def heard(self, link: _PipeLink, said: _Said) -> None:
        """Act on what `link`'s replies said (in the thread that read them)."""
        if said.lost:
            self.lose(link, said.reason)
        if said.refused:
            self._hand_back(list(said.refused), said.reason)

    def lose(self, link: _PipeLink, reason: str) -> None:
        """Close `link`; hand back what it has not confirmed."""
        with link.lock:
            if link.lost:
                return
            link.lost = True
            ops = [op for _, _, op in link.unconfirmed]
            link.unconfirmed.clear()
        if self._links.pop(id(link), None) is link:
            self._lost_acks += link.acks
        link.connection.disconnect()
        if ops:
            self._hand_back(ops, reason)

    def settle(self, deadline: float | None) -> bool:
        while True:
            waiting = [link for link in list(self._links.values()) if link.unconfirmed]
            if not waiting:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                for link in waiting:
                    self.lose(link, "not confirmed by Redis before the flush timeout")
                return False
            for link in waiting:
                said = link.read()
                if said is not None:
                    self.heard(link, said)
            time.sleep(0.001)

    def _run(self) -> None:
        stale_ns = round(_CONFIRM_EVERY * 1e9)
        while True:
            waiting = False
            now = time.perf_counter_ns()
            for link in list(self._links.values()):
                unconfirmed = link.unconfirmed
                if unconfirmed:
                    waiting = True
                    if now - unconfirmed[0][0] >= stale_ns:
                        said = link.read()
                        if said is not None:
                            self.heard(link, said)
            self._expire()
            time.sleep(_CONFIRM_EVERY if waiting else _REPLIES_IDLE)

    def _expire(self) -> None:
        oldest = time.perf_counter_ns() - self._timeout_ns
        for link in list(self._links.values()):
            unconfirmed = link.unconfirmed
            if unconfirmed and unconfirmed[0][0] < oldest:
                self.lose(link, f"Redis did not reply within {self._timeout:g} s")


class _Socket:
    """A connected socket, made non-blocking. `exchange(command)` sends `command` and
    returns the one-line reply, within `timeout` seconds (TimeoutError beyond): the reply is
    polled for, without sleeping, until `spin_ns` after the send began, then waited for in
    `poll()`. `write(command)` only sends (within `timeout`); `read()` returns what has
    arrived. A closed connection raises ConnectionError."""

    def __init__(self, sock: socket.socket, timeout: float, spin_ns: int) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._timeout_ns = round(timeout * 1e9)
        self._spin_ns = spin_ns
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def write(self, command: bytes) -> int:
        """Send `command`; returns when it started (`perf_counter_ns`)."""
        started = time.perf_counter_ns()
        try:
            sent = self._sock.send(command)  # the whole command, unless the buffer is full
        except BlockingIOError:
            sent = 0
        if sent < len(command):
            self._send_rest(memoryview(command)[sent:], started)
        return started

    def read(self, size: int = _REPLY_CHUNK) -> bytes:
        chunk = self._sock.recv(size)
        if not chunk:
            raise ConnectionResetError("Redis closed the connection")
        return chunk

    def exchange(self, command: bytes) -> bytes:
        started = self.write(command)
        spin_until = started + self._spin_ns
        reply = b""
        while True:
            try:
                reply += self.read()
            except BlockingIOError:
                if time.perf_counter_ns() >= spin_until:
                    self._wait(started)
                continue
            if reply.endswith(b"\r\n"):
                return reply

    def _send_rest(self, rest: memoryview, started: int) -> None:
        self._poll.modify(self._sock, select.POLLOUT)
        try:
            while rest:
                self._wait(started)
                with contextlib.suppress(BlockingIOError):
                    rest = rest[self._sock.send(rest) :]
        finally:
            self._poll.modify(self._sock, select.POLLIN)

    def _wait(self, started: int) -> None:
        """Sleep until the socket is ready (for what it is registered for); TimeoutError
        once `timeout` after `started` is spent."""
        left_ns = self._timeout_ns - (time.perf_counter_ns() - started)
        if left_ns <= 0 or not self._poll.poll(-(-left_ns // 1_000_000)):
            raise TimeoutError(f"Redis did not reply within {self._timeout_ns / 1e9:g} s")


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


# -- worker side ----------------------------------------------------------------------

_UNSAFE_CONTENT = frozenset({"pickle", "application/x-python-serialize", "yaml"})


def register_delivery_task(
    app: Celery,
    *,
    client: Freeplay | None = None,
    api_key: str | None = None,
    api_base: str | None = None,
    max_retries: int = DEFAULT_MAX_RETRIES,
    retry_backoff_max: int = DEFAULT_RETRY_BACKOFF_MAX,
) -> Task:
    """Register `DELIVERY_TASK` on `app`: the worker's half of `configure_recording(via=app)`.

    The worker delivers with `client`, or one built from `api_key`/`api_base` or
    `FREEPLAY_API_KEY`/`FREEPLAY_API_BASE`. An app that accepts pickle is refused: the
    route's messages are JSON, and a worker should not unpickle what claims to be one.
    Returns the task. Registering twice replaces the first registration.
    """
    if not isinstance(app, Celery):
        raise TypeError(f"register_delivery_task() takes a Celery app, not {app!r}.")
    accepted = {str(c).lower() for c in app.conf.accept_content or ()}
    unsafe = sorted(accepted & _UNSAFE_CONTENT)
    if unsafe:
        raise ConfigurationError(
            f"register_delivery_task(): the app accepts {', '.join(unsafe)} content "
            "(accept_content); recordings travel as JSON only. Set "
            "app.conf.accept_content = ['json'] for the worker that delivers them."
        )
    for name, value in (("max_retries", max_retries), ("retry_backoff_max", retry_backoff_max)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigurationError(
                f"register_delivery_task({name}=...) must be an int >= 1, not {value!r}."
            )
    fp = build_client(
        client=client,
        api_key=api_key,
        api_base=api_base,
        name=lambda o: f"`register_delivery_task({o}=...)`",
    )
    deliverer = _Deliverer(fp)

    def deliver(task: Task, data: Any) -> str:
        return deliverer(task, data)

    deliver.__name__ = deliver.__qualname__ = "deliver"
    task: Task = app.task(
        name=DELIVERY_TASK,
        bind=True,
        serializer="json",
        acks_late=True,
        reject_on_worker_lost=True,
        autoretry_for=(TransientDeliveryError,),
        retry_backoff=True,
        retry_backoff_max=retry_backoff_max,
        retry_jitter=True,
        max_retries=max_retries,
        ignore_result=True,
    )(deliver)
    return task


class _Deliverer:
    """The delivery task's body; the transport is made at the first delivery (in the pool
    process, after the fork), not at registration."""

    def __init__(self, client: Freeplay) -> None:
        self._client = client
        self._transport: _Transport | None = None

    def __call__(self, task: Task, data: Any) -> str:
        try:
            if not isinstance(data, Mapping):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            op = _op_from_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.error(LOG_UNREADABLE, task.request.id, _error_text(exc))
            return "unreadable"
        transport = self._transport
        if transport is None:
            transport = self._transport = _Transport(self._client)
        try:
            transport.send(op)
        except Exception as exc:
            failure = transport.classify(exc)
            ref = short_ref(op.session_id)
            reason = failure.reason.replace(op.session_id, ref)
            if failure.transient or (failure.status == 404 and _follows_another(op)):
                retries = int(task.request.retries or 0)
                if task.max_retries is None or retries < task.max_retries:
                    raise TransientDeliveryError(f"{op.kind} for session {ref}: {reason}") from None
                reason = f"{reason} (after {retries + 1} attempts)"
            elif failure.status not in SPOOLED_STATUSES:
                logger.error(LOG_DROPPED, op.kind, ref, reason)
                return "rejected"
            transport.spool(op, reason)
            logger.error(LOG_SPOOLED, op.kind, ref, reason)
            return "spooled"
        return "sent"


def _follows_another(op: Operation) -> bool:
    """Whether `op` needs another operation stored first (feedback its completion, metadata
    its trace or session). Routed operations are not ordered across worker processes, so a
    404 for it may only mean that the other one is still queued: it is retried like a
    transient failure, and spooled like one once the retries are spent."""
    return op.follows is not None or op.follows_session
