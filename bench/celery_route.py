"""How long `record()` takes on the request path with the Celery route, on a local Redis.

    .venv/bin/python bench/celery_route.py                 # 7 rounds of 2,000 calls
    .venv/bin/python bench/celery_route.py --rounds 5 --records 2000
    .venv/bin/python bench/celery_route.py --placement apart   # Redis on a core of its own

One `redis-server` is started here, listening on a free loopback port and on a unix socket;
no worker runs (the queue is emptied between rounds, outside the timings). Each round
times, one call at a time with `perf_counter_ns`, in an order that rotates from round to
round so that no case always runs first:

- `lpush`: a bare redis-py `Redis.lpush` of the bytes the route writes for one
  `record()` (one round trip to Redis, through redis-py's connection pool);
- `own lpush`: the same bytes through the route's own LPUSH (its kept connections, its
  default reply spin; pipelined over the unix socket);
- `route`: `record()` (a two-message completion inside `session_scope`) with
  `configure_recording(via=app)`; over TCP it returns once Redis replied, over the unix
  socket once the kernel holds the command in Redis's receive queue (the replies are read
  by the route's own thread: a process killed then loses nothing);
- `route, no spin`: the same with `CeleryRoute(app, reply_spin=0)`: the thread sleeps on
  Redis's reply at once instead of polling for it first (over TCP: the unix socket's
  publishes do not wait for a reply, so there it is the same as `route`);
- `apply_async`: `record()` with a route that calls Celery's own
  `task.apply_async(args=(op.to_json(),))` on the delivery task, what a user would write
  without this package's route (also returns once Redis holds the message);
- each of those over TCP loopback (`redis://127.0.0.1:PORT/0`) and over the unix
  socket (`redis+socket:///.../redis.sock`);
- `send only`: the same bytes as an LPUSH written to a socket of its own, its replies read
  by another thread, so the call returns once the kernel holds the command, not once
  Redis replied: the floor of a pipelined publish;
- `in-process`: `record()` on the default route (the recorder's own queue and threads),
  for comparison; Freeplay is the local server;
- the parts of the route's `record()` before its LPUSH, one at a time: `record() alone`
  (with a route that takes the operation and does nothing), `op.to_json_text()`
  (the operation's JSON, one pass), and the message built around it (`envelope`).

Where the kernel runs Redis matters as much as the code (`--placement`): a write to a
unix socket wakes Redis with the "sync" hint, which asks the scheduler to run it on the
writer's CPU, where it then takes turns with the recording thread. `free` (the default)
leaves the placement to the scheduler, as an app does; `apart` pins this process to CPU 0
and Redis to CPU 1 (Redis given a core of its own, e.g. with its `server_cpulist`);
`together` pins both to CPU 0.

Prints, per round, each case's median and p99 and the load average; then the median over
rounds of each, with the CPU time the process spent per call (a spin on the reply shows
there), the ratios that matter (route / lpush, apply_async / route, unix / tcp), and whether
`record()` on the route met 100 µs at p99.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery_apps import RedisServer

from freeplay_integrations import configure_recording, flush, record, session_scope
from freeplay_integrations.local import DEFAULT_PROJECT_ID, LocalFreeplay

MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France. " * 4},
]
WARM_UP = 200
TARGET_P99_US = 100.0
QUEUE = "celery"
#: `--placement`: the CPUs of this process and of Redis (None: the scheduler's choice).
PLACEMENTS: dict[str, tuple[set[int] | None, set[int] | None]] = {
    "free": (None, None),
    "apart": ({0}, {1}),
    "together": ({0}, {0}),
}


class NullRoute:
    """A `via=` route that keeps the last operation and sends nothing: `record()` alone."""

    op: Any = None

    def submit(self, op: Any) -> bool:
        self.op = op
        return True


class ApplyAsyncRoute:
    """A `via=` route that publishes with Celery's own `apply_async` (for comparison)."""

    def __init__(self, task: Any) -> None:
        self._task = task

    def submit(self, op: Any) -> bool:
        self._task.apply_async(args=(op.to_json(),))
        return True


class SendOnly:
    """LPUSH commands written to a connected socket; a daemon thread reads the replies."""

    def __init__(self, sock: socket.socket, key: str) -> None:
        if sock.family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._head = b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n$" % (len(key), key.encode())
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while self._sock.recv(65536):
            pass

    def __call__(self, value: bytes) -> None:
        self._sock.sendall(b"%s%d\r\n%s\r\n" % (self._head, len(value), value))


def _time(call: Callable[[int], object], n: int) -> list[float]:
    """Each call's wall time, in µs, followed by the process's CPU time per call."""
    timings: list[float] = []
    cpu = time.process_time_ns()
    for i in range(n):
        started = time.perf_counter_ns()
        call(i)
        timings.append((time.perf_counter_ns() - started) / 1000)
    timings.append((time.process_time_ns() - cpu) / 1000 / n)
    return timings


def _records(client: Any, n: int) -> list[float]:
    with session_scope(client, project_id=DEFAULT_PROJECT_ID):
        _time(lambda i: record(all_messages=MESSAGES, inputs={"i": i}), WARM_UP)
        return _time(lambda i: record(all_messages=MESSAGES, inputs={"i": i}), n)


def _calls(call: Callable[[], object], n: int) -> list[float]:
    _time(lambda i: call(), WARM_UP)
    return _time(lambda i: call(), n)


def _stats(timings: list[float]) -> dict[str, float]:
    *walls, cpu = timings
    ordered = sorted(walls)
    n = len(ordered)
    p99 = ordered[min(n - 1, int(n * 0.99))]
    return {"median": statistics.median(ordered), "p99": p99, "cpu": cpu}


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _never_handed_back(ops: list[Any], reason: str) -> None:
    raise AssertionError(f"Redis did not confirm {len(ops)} messages: {reason}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--placement", choices=PLACEMENTS, default="free")
    args = parser.parse_args(argv)
    mine, redis_cpus = PLACEMENTS[args.placement]
    if mine is not None:  # before any thread starts: they all inherit it
        os.sched_setaffinity(0, mine)
    import redis
    from celery import Celery

    from freeplay_integrations._celery_route import (
        DEFAULT_REPLY_SPIN,
        CeleryRoute,
        _Envelope,
        _redis_lpush,
    )
    from freeplay_integrations.celery import register_delivery_task

    print(
        f"{os.cpu_count()} CPUs, load average {_load()} at the start; redis-py {redis.__version__}"
        f" (hiredis: {redis.utils.HIREDIS_AVAILABLE}); {args.rounds} rounds of {args.records};"
        f" placement: {args.placement}"
    )
    spool_dir = tempfile.mkdtemp(prefix="freeplay-bench-")
    configure_recording(spool_path=os.path.join(spool_dir, "spool.jsonl"))
    with LocalFreeplay() as freeplay, RedisServer() as server:
        if redis_cpus is not None:
            for thread in os.listdir(f"/proc/{server.process.pid}/task"):
                os.sched_setaffinity(int(thread), redis_cpus)
        cases: dict[str, Callable[[], list[float]]] = {}
        inspect = server.client()
        null, alone = NullRoute(), freeplay.client()
        configure_recording(alone, via=null)
        _records(alone, 1)
        for transport, url, bare in (
            ("tcp", server.url, redis.Redis(host="127.0.0.1", port=server.port)),
            ("unix", server.socket_url, redis.Redis(unix_socket_path=server.socket_path)),
        ):
            app = Celery(f"bench-{transport}", broker=url)
            task = register_delivery_task(app, client=freeplay.client())
            routed, sleeper, naive = freeplay.client(), freeplay.client(), freeplay.client()
            configure_recording(routed, via=app)
            configure_recording(sleeper, via=CeleryRoute(app, reply_spin=0))
            configure_recording(naive, via=ApplyAsyncRoute(task))
            _records(routed, 1)
            message = inspect.lindex(QUEUE, 0)  # the bytes the route wrote for one record()
            own = _redis_lpush(app, QUEUE, 1.0, DEFAULT_REPLY_SPIN, _never_handed_back)
            cases[f"lpush {transport}"] = lambda r=bare, m=message: _calls(
                lambda: r.lpush(QUEUE, m), args.records
            )
            cases[f"own lpush {transport}"] = lambda o=own, m=message, op=null.op: _calls(
                lambda: o(m, op), args.records
            )
            sock = (
                socket.create_connection(("127.0.0.1", server.port))
                if transport == "tcp"
                else socket.socket(socket.AF_UNIX)
            )
            if transport == "unix":
                sock.connect(server.socket_path)
            sender = SendOnly(sock, QUEUE)
            cases[f"send only {transport}"] = lambda s=sender, m=message: _calls(
                lambda: s(m), args.records
            )
            cases[f"route {transport}"] = lambda c=routed: _records(c, args.records)
            cases[f"route, no spin {transport}"] = lambda c=sleeper: _records(c, args.records)
            cases[f"apply_async {transport}"] = lambda c=naive: _records(c, args.records)
        local = freeplay.client()
        cases["in-process"] = lambda: _records(local, args.records)
        op, envelope = null.op, _Envelope(QUEUE, "0@bench")
        op_text = op.to_json_text()
        cases["record() alone"] = lambda: _records(alone, args.records)
        cases["op.to_json_text()"] = lambda: _calls(op.to_json_text, args.records)
        cases["envelope"] = lambda: _calls(lambda: envelope.message(op_text, op.kind), args.records)
        print(f"one message: {len(message)} bytes; the operation's JSON: {len(op_text)} bytes")

        names = list(cases)
        results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for n in range(args.rounds):
            order = names[n % len(names) :] + names[: n % len(names)]
            cells = []
            for name in order:
                inspect.delete(QUEUE)
                stats = _stats(cases[name]())
                flush(60)  # the in-process route's threads do not run into the next case
                results[name].append(stats)
                cells.append(f"{name} {stats['median']:.0f}/{stats['p99']:.0f}")
            print(f"round {n + 1} (load {_load()}), median/p99 µs: " + ", ".join(cells), flush=True)
        inspect.delete(QUEUE)

    summary = {
        name: {k: statistics.median(r[k] for r in rounds) for k in ("median", "p99", "cpu")}
        for name, rounds in results.items()
    }
    print(f"\nmedian over {args.rounds} rounds of {args.records} calls each (load {_load()}):")
    for name, s in summary.items():
        print(
            f"  {name:>21}: median {s['median']:7.1f} µs   p99 {s['p99']:7.1f} µs"
            f"   CPU {s['cpu']:6.1f} µs/call"
        )

    def ratio(a: str, b: str) -> str:
        return "  ".join(f"{k} {summary[a][k] / summary[b][k]:.2f}x" for k in ("median", "p99"))

    print("ratios:")
    for transport in ("tcp", "unix"):
        route, lpush, naive = (f"{c} {transport}" for c in ("route", "lpush", "apply_async"))
        print(f"  {route} / {lpush}: {ratio(route, lpush)}")
        print(f"  {naive} / {route}: {ratio(naive, route)}")
    for transport in ("tcp", "unix"):
        own, lpush = f"own lpush {transport}", f"lpush {transport}"
        print(f"  {own} / {lpush}: {ratio(own, lpush)}")
    for transport in ("tcp", "unix"):
        route, sleeper = f"route {transport}", f"route, no spin {transport}"
        print(f"  {route} / {sleeper}: {ratio(route, sleeper)}")
    for transport in ("tcp", "unix"):
        route, sent = f"route {transport}", f"send only {transport}"
        print(f"  {sent} / {route}: {ratio(sent, route)}")
    for case in ("lpush", "own lpush", "route"):
        print(f"  {case} unix / {case} tcp: {ratio(f'{case} unix', f'{case} tcp')}")
    before = ("record() alone", "op.to_json_text()", "envelope")
    parts = sum(summary[name]["median"] for name in before)
    print(f"the route's record() in parts (medians): {' + '.join(before)} = {parts:.1f} µs")
    for transport in ("tcp", "unix"):
        own, route = summary[f"own lpush {transport}"]["median"], f"route {transport}"
        print(
            f"  + own lpush {transport} {own:.1f} = {parts + own:.1f} µs"
            f" (measured {route}: {summary[route]['median']:.1f} µs)"
        )
    for transport in ("tcp", "unix"):
        p99 = summary[f"route {transport}"]["p99"]
        verdict = "met" if p99 <= TARGET_P99_US else "NOT met"
        target = f"record() p99 <= {TARGET_P99_US:.0f} µs over {transport}"
        print(f"target: {target}: {verdict} ({p99:.1f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
