"""The spool: a JSON-lines file of operations not delivered yet (write, drain, replay).

- Writing appends whole lines, under a shared lock on the file, so a drain (which renames
  the file, then takes the exclusive lock) never misses a line being written. A write
  after a line cut short by a crash starts on a new line.
- The file is 0600 and the directories it creates 0700, whatever the umask; an existing
  spool others can read is fixed (and said, once).
- Draining takes `<spool>.lock` (one drainer at a time over every process sharing the
  path), renames the spool to `<spool>.draining-*`, delivers every readable line, moves
  unreadable ones to `<spool>.bad`, appends what is still undeliverable back to the spool,
  and only then removes the renamed file. A crash mid-drain leaves it for the next drain,
  which resends it: the operations' fixed IDs make that idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

from ._operations import DELETE_SESSION, Operation, _json_default, operation_from_json

__all__ = [
    "DrainResult",
    "ReplayResult",
    "append_lines",
    "check_spool",
    "default_spool_path",
    "drain",
    "read_spool",
    "replay_spool",
    "spool_line",
]

logger = logging.getLogger("freeplay_integrations.recording")

LOG_FIXED_MODE = (
    "freeplay_integrations: the spool %s could be read by other users (mode %o); it is now 0600."
)

#: What a drain's `send` answers for one operation.
Outcome = Literal["sent", "failed", "retry"]

_lock = threading.Lock()
_fixed: set[str] = set()


def default_spool_path() -> str:
    """`$XDG_STATE_HOME/freeplay-integrations/spool.jsonl` (else under `~/.local/state`)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "freeplay-integrations", "spool.jsonl")


def _make_dirs(directory: str) -> None:
    if not directory or os.path.isdir(directory):
        return
    _make_dirs(os.path.dirname(directory))
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask


def _open_append(path: str) -> int:
    _make_dirs(os.path.dirname(path))
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    mode = os.fstat(fd).st_mode & 0o777
    if mode != 0o600:
        os.fchmod(fd, 0o600)
        if mode & 0o077 and path not in _fixed:
            _fixed.add(path)
            logger.warning(LOG_FIXED_MODE, path, mode)
    return fd


def spool_line(op: Operation, api_base: str, reason: str) -> str:
    line = op.to_json()
    line["api_base"] = api_base
    line["reason"] = reason
    return json.dumps(line, default=_json_default) + "\n"


def append_lines(path: str, lines: Iterable[str]) -> None:
    """Append whole lines to the spool `path` (one `write`; raises OSError)."""
    data = "".join(lines).encode("utf-8")
    if not data:
        return
    with _lock:
        while True:
            fd = _open_append(path)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                try:
                    if os.fstat(fd).st_ino != os.stat(path).st_ino:
                        continue  # renamed by a drain meanwhile: write to the new file
                except FileNotFoundError:
                    continue
                size = os.fstat(fd).st_size
                prefix = b""
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    prefix = b"\n"  # the last write was cut short: start a new line
                _write_all(fd, prefix + data)
                return
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def check_spool(path: str) -> str | None:
    """Why `path` cannot be written, or None when it can (creating nothing but dirs)."""
    try:
        directory = os.path.dirname(path) or "."
        _make_dirs(directory)
        if not os.path.isdir(directory):
            return f"{directory} is not a directory"
        if os.path.isdir(path):
            return f"{path} is a directory"
        if os.path.exists(path):
            if not os.access(path, os.W_OK):
                return f"{path} is not writable"
        elif not os.access(os.path.dirname(path) or ".", os.W_OK):
            return f"{os.path.dirname(path)} is not writable"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def read_spool(path: str) -> tuple[list[tuple[Operation, str]], list[str]]:
    """The operations in a spool file (each with its `api_base`), and its unreadable lines."""
    operations: list[tuple[Operation, str]] = []
    bad: list[str] = []
    with open(path, "rb") as spool:
        for raw in spool:
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                bad.append(raw.decode("utf-8", "replace").strip())
                continue
            if not line:
                continue
            try:
                parsed = json.loads(line)
                op = operation_from_json(parsed)
            except (ValueError, TypeError):
                bad.append(line)
                continue
            operations.append((op, str(parsed.get("api_base") or "")))
    return operations, bad


@dataclass
class DrainResult:
    """What a drain did."""

    #: False when another process held the lock (nothing was done).
    locked: bool = True
    read: int = 0
    sent: int = 0
    #: Refused for good by Freeplay: dropped (and logged by `send`).
    failed: int = 0
    #: Still undeliverable (or for another api_base): back in the spool.
    kept: int = 0
    #: Not sent: a later line deletes their session, or a second copy.
    skipped: int = 0
    #: Lines that are not operations: moved to `<spool>.bad`.
    unreadable: int = 0


@contextlib.contextmanager
def _drain_lock(path: str, wait: bool) -> Iterator[bool]:
    _make_dirs(os.path.dirname(path))
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def drain(
    path: str,
    send: Callable[[Operation], Outcome],
    *,
    api_base: str | None,
    wait: bool = False,
    concurrency: int = 1,
) -> DrainResult:
    """Deliver what the spool `path` holds through `send`; keep what still fails.

    Lines recorded for another `api_base` are kept (None: every line is sent through
    `send`, which names its own destination). After the first "retry" the rest is kept
    without trying: Freeplay is still unreachable.
    """
    result = DrainResult()
    with _drain_lock(path, wait) as locked:
        if not locked:
            result.locked = False
            return result
        working = sorted(glob.glob(glob.escape(path) + ".draining-*"))
        if os.path.exists(path):
            fresh = f"{path}.draining-{os.getpid()}-{os.urandom(4).hex()}"
            os.replace(path, fresh)
            working.append(fresh)
        giving_up = False
        for name in working:
            # Writers hold a shared lock while they write: wait for any still writing.
            fd = os.open(name, os.O_RDONLY)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            finally:
                os.close(fd)
            operations, bad = read_spool(name)
            result.read += len(operations)
            if bad:
                result.unreadable += len(bad)
                append_lines(path + ".bad", (line + "\n" for line in bad))
            keep: list[str] = []
            last_delete: dict[tuple[str, str], int] = {}
            for index, (op, _) in enumerate(operations):
                if op.kind == DELETE_SESSION:
                    last_delete[(op.project_id, op.session_id)] = index
            seen: set[str] = set()
            todo: list[tuple[Operation, str]] = []
            for index, (op, line_base) in enumerate(operations):
                key = op.key
                deleted_at = last_delete.get((op.project_id, op.session_id), -1)
                if (op.kind != DELETE_SESSION and index < deleted_at) or key in seen:
                    result.skipped += 1
                    continue
                seen.add(key)
                if giving_up or (
                    api_base is not None and line_base.rstrip("/") != api_base.rstrip("/")
                ):
                    keep.append(spool_line(op, line_base, "kept by a drain"))
                    continue
                todo.append((op, line_base))
            # Concurrently, in waves that keep the order the API needs: what follows
            # nothing, then what follows another operation or its session's recordings,
            # then session deletes.
            waves: list[list[tuple[Operation, str]]] = [[], [], []]
            for item in todo:
                op = item[0]
                later = op.follows is not None or op.follows_session
                waves[2 if op.kind == DELETE_SESSION else 1 if later else 0].append(item)
            for wave in waves:
                if giving_up:
                    keep.extend(spool_line(op, base, "kept by a drain") for op, base in wave)
                    continue
                outcomes = _send_all(send, [op for op, _ in wave], concurrency)
                for (op, line_base), outcome in zip(wave, outcomes, strict=True):
                    if outcome == "sent":
                        result.sent += 1
                    elif outcome == "failed":
                        result.failed += 1
                    else:
                        giving_up = True
                        keep.append(spool_line(op, line_base, "Freeplay still unreachable"))
            result.kept += len(keep)
            append_lines(path, keep)
            os.remove(name)
    return result


def _send_all(
    send: Callable[[Operation], Outcome], ops: list[Operation], concurrency: int
) -> list[Outcome | None]:
    """`send` each of `ops` from up to `concurrency` threads; after a "retry", try no more.

    None: not tried.
    """
    outcomes: list[Outcome | None] = [None] * len(ops)
    stop = threading.Event()
    next_index = iter(range(len(ops)))
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                index = next(next_index, None)
            if index is None:
                return
            outcome = send(ops[index])
            outcomes[index] = outcome
            if outcome == "retry":
                stop.set()

    if concurrency <= 1:
        worker()  # in this thread: whatever `send` raises reaches the caller
        return outcomes
    # Daemon threads, as the recorder's own: a drain must never keep a process from exiting
    # (what it has not sent stays in the draining file for the next drain).
    threads = [
        threading.Thread(target=worker, name="freeplay-recorder-drain-send", daemon=True)
        for _ in range(min(concurrency, len(ops)))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


@dataclass
class ReplayResult:
    """What `replay_spool` did."""

    read: int = 0
    sent: int = 0
    #: Refused by Freeplay for good: dropped, and logged.
    failed: int = 0
    #: Still not deliverable: back in the spool for a later replay.
    kept: int = 0
    #: Not sent: a later line deletes their session, or a second copy.
    skipped: int = 0
    #: Lines that are not operations: moved to `<spool>.bad`.
    unreadable: int = 0
    #: Kept for compatibility: a replay no longer loses what it cannot write back.
    lost: int = 0
    kept_copy: str | None = None
    #: True when another process was draining this spool (nothing was done).
    busy: bool = False


def replay_spool(
    path: str | os.PathLike[str],
    *,
    api_key: str,
    api_base: str,
    attempt_timeout: float = 10.0,
    attempts: int = 3,
) -> ReplayResult:
    """Send what the spool `path` holds to `api_base`; what still fails stays in the spool.

    The API key goes to `api_base` only: the `api_base` a line names is not used.
    """
    import time

    from freeplay import Freeplay

    from ._transport import SdkTransport

    if not api_base:
        raise ValueError("replay_spool() needs the api_base to send to")
    path = os.path.abspath(path)
    transport = SdkTransport(Freeplay(freeplay_api_key=api_key, api_base=api_base))

    def send(op: Operation) -> Outcome:
        for attempt in range(max(1, attempts)):
            try:
                transport.send(op, attempt_timeout)
            except Exception as exc:
                failure = transport.classify(exc)
            else:
                return "sent"
            if not failure.transient:
                if failure.status in (401, 403):
                    return "retry"
                logger.error(
                    "freeplay_integrations: Freeplay refused a %s (dropped): %s",
                    op.kind,
                    failure.reason,
                )
                return "failed"
            if attempt + 1 < attempts:
                time.sleep(min(5.0, 0.5 * 2**attempt, failure.retry_after or 5.0))
        return "retry"

    drained = drain(path, send, api_base=None, wait=False)
    return ReplayResult(
        read=drained.read,
        sent=drained.sent,
        failed=drained.failed,
        kept=drained.kept,
        skipped=drained.skipped,
        unreadable=drained.unreadable,
        busy=not drained.locked,
    )
