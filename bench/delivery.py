"""Delivery throughput with Freeplay at a real network distance, side by side with the SDK.

The local Freeplay runs in its own process (so it does not share this process's GIL), with
`faults.latency(LATENCY)`: every API answer is delayed, concurrent requests are not
serialised. In one run, interleaved over `--rounds`:

- bare SDK: `client.recordings.create` from a pool of `--threads` threads, over
  `--sessions` sessions;
- recorder: the same number of recordings made with `record()` from `--threads` threads
  over the same number of sessions, default settings; timed until `flush()` returns. The
  time each `record()` call spent on the caller's path is collected (median, p99);
- one session: `--one-session` recordings in a single `session_scope`, until delivered;
- paced (`--app-rate`, 300/s by default; 0 skips it): the same recordings from the same
  threads, but at the app's rate: recording k is due at start + k / rate, so each request
  thread records, then waits (its next model call) while the senders deliver at full
  speed. The time of each `record()` call is collected again.

Why two shapes for `record()`'s time. In the first ("burst"), 100 threads call `record()`
back to back, all runnable at once with the senders on 2 cores: a call's time then
includes whatever runs while it waits for the GIL (the 5 ms switch interval, and the
other threads' turns) or for a core, which measures the scheduler of the machine more
than the call. An app does not record in a tight loop: a request thread records once per
model call. The paced shape is that: each call starts after its thread waited, while the
delivery runs at full speed. Both are printed; neither is hidden. On a loaded shared
machine the paced calls are slower at the median than the burst ones: each call finds
the CPU caches cold after its wait (other processes ran meanwhile). Measured with no
recorder at all (a route that takes every operation and does nothing), one thread calling
`record()` at 300/s took ~110 us a call at load average 5, against ~15 us back to back,
while a pure-Python loop of the same length slowed only from 7 to 11 us. So quote both
shapes, with the load average printed at the end.

Then, with `--memory N`, N recordings at zero latency with the process's resident memory
sampled every 10%, with what it is made of (GC-tracked Python objects, and glibc malloc's
bytes in use and held free): it must stay flat.

    .venv/bin/python bench/delivery.py [--recordings 1500] [--sessions 150] [--threads 100]
        [--latency 0.1] [--one-session 500] [--rounds 3] [--app-rate 300] [--memory 100000]
        [--tracemalloc]
    .venv/bin/python bench/delivery.py --outage 120 [--outage-rate 50] [--queue-size N]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from freeplay import Freeplay
from freeplay.resources.recordings import RecordPayload
from freeplay.resources.sessions import SessionInfo

from freeplay_integrations import (
    configure_recording,
    flush,
    record,
    recorder_stats,
    session_scope,
)

API_KEY = "bench-key"
PROJECT = "de11e0a1-0000-4000-8000-00000000de11"  # a UUID: the local Freeplay knows it
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]

SERVER = """
import sys, time
from freeplay_integrations.local import LocalFreeplay
with LocalFreeplay(api_key=sys.argv[1], project_id=sys.argv[2]) as server:
    server.faults.latency(float(sys.argv[3]))
    print("API_BASE=" + server.api_base, flush=True)
    control = sys.stdin
    for line in control:  # "latency X" lines change the latency; EOF stops
        if line.startswith("latency "):
            server.faults.latency(float(line.split()[1]))
            print("ok", flush=True)
        elif line.startswith("down "):
            server.faults.fail_for(float(line.split()[1]))
            print("ok", flush=True)
        elif line.startswith("count"):
            print(len(server.completions()), server.duplicates, flush=True)
"""


@contextmanager
def local_server(latency: float) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, API_KEY, PROJECT, str(latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        match = re.search(r"API_BASE=(\S+)", process.stdout.readline())
        if not match:
            raise RuntimeError("the local Freeplay server did not start")
        yield match.group(1), process
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)


def command(process: subprocess.Popen[str], line: str) -> str:
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(line + "\n")
    process.stdin.flush()
    return process.stdout.readline().strip()


def set_latency(process: subprocess.Popen[str], seconds: float) -> None:
    command(process, f"latency {seconds}")


def outage(
    client: Freeplay, process: subprocess.Popen[str], seconds: float, rate: float
) -> dict[str, float]:
    """Record at `rate`/s while Freeplay answers 503 for `seconds`, then 5 s more after.

    Returns how many were recorded, delivered, stored twice, spooled and lost, and how long
    after the recovery the last one arrived.
    """
    before = int(command(process, "count").split()[0])
    command(process, f"down {seconds}")
    down_until = time.monotonic() + seconds
    recorded = 0
    with session_scope(client, project_id=PROJECT):
        started = time.monotonic()
        while time.monotonic() < down_until + 5:
            record(all_messages=MESSAGES)
            recorded += 1
            time.sleep(max(0.0, started + recorded / rate - time.monotonic()))
    deadline = time.monotonic() + 120
    delivered = duplicates = 0
    while time.monotonic() < deadline:
        count, duplicates = (int(x) for x in command(process, "count").split())
        delivered = count - before
        if delivered >= recorded:
            break
        time.sleep(0.1)
    stats = recorder_stats(client)
    return {
        "recorded": recorded,
        "delivered": delivered,
        "duplicates": duplicates,
        "after_recovery_s": time.monotonic() - down_until,
        "spooled": stats.spooled,
        "lost": stats.lost,
    }


def session_ids(count: int) -> list[str]:
    import uuid

    return [str(uuid.uuid4()) for _ in range(count)]


def bare_sdk(client: Freeplay, recordings: int, sessions: int, threads: int) -> float:
    ids = session_ids(sessions)

    def one(n: int) -> None:
        session = SessionInfo(ids[n % sessions], None)
        payload = RecordPayload(project_id=PROJECT, all_messages=MESSAGES, session_info=session)
        for attempt in range(5):  # what a user's own loop would do on a connection error
            try:
                client.recordings.create(payload)
                return
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(recordings)))
    return recordings / (time.perf_counter() - started)


def recorder(
    client: Freeplay, recordings: int, sessions: int, threads: int
) -> tuple[float, list[float]]:
    """Recordings/s until delivered, and the time each record() call took (seconds)."""
    per_thread = [[] for _ in range(threads)]  # type: list[list[float]]
    per_session = recordings // sessions
    barrier = threading.Barrier(threads + 1)

    def producer(index: int) -> None:
        times = per_thread[index]
        barrier.wait()
        for _ in range(index, sessions, threads):
            with session_scope(client, project_id=PROJECT):
                for _n in range(per_session):
                    started = time.perf_counter()
                    record(all_messages=MESSAGES)
                    times.append(time.perf_counter() - started)

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    assert flush(600)
    elapsed = time.perf_counter() - started
    return per_session * sessions / elapsed, [t for times in per_thread for t in times]


def paced(
    client: Freeplay, recordings: int, sessions: int, threads: int, rate: float
) -> tuple[float, list[float]]:
    """`recordings` made at the app's `rate` (per second, in all) from `threads` request threads.

    Each request thread records, then waits (the model call of its next turn) so that the
    threads together record `rate` per second, spread evenly; the senders deliver at full
    speed meanwhile. Returns recordings/s until delivered and the time of each record().
    """
    per_thread = [[] for _ in range(threads)]  # type: list[list[float]]
    per_session = max(1, recordings // sessions)
    tickets = itertools.count()  # recording k is due at start + k / rate, whoever makes it
    barrier = threading.Barrier(threads + 1)
    start = [0.0]

    def producer(index: int) -> None:
        times = per_thread[index]
        barrier.wait()
        for _ in range(index, sessions, threads):
            with session_scope(client, project_id=PROJECT):
                for _n in range(per_session):
                    due = start[0] + next(tickets) / rate
                    time.sleep(max(0.0, due - time.perf_counter()))
                    started = time.perf_counter()
                    record(all_messages=MESSAGES)
                    times.append(time.perf_counter() - started)

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    start[0] = time.perf_counter() + 0.05
    barrier.wait()
    for worker in workers:
        worker.join()
    assert flush(600)
    elapsed = time.perf_counter() - start[0]
    return per_session * sessions / elapsed, [t for times in per_thread for t in times]


def one_session(client: Freeplay, recordings: int) -> float:
    started = time.perf_counter()
    with session_scope(client, project_id=PROJECT):
        for _ in range(recordings):
            record(all_messages=MESSAGES)
    assert flush(600)
    return recordings / (time.perf_counter() - started)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def heap_sample() -> tuple[float, int, float, float, float]:
    """RSS (MiB), live Python objects tracked by the GC, glibc malloc's bytes in use and
    free inside its heaps (MiB; -1 where `mallinfo2` is not available), and what Python
    allocated and still holds (MiB, with `--tracemalloc`; else -1).

    Telling these apart says what grows: live objects (a leak) or memory the allocator
    holds (fragmentation, per-thread caches).
    """
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else -1.0
    in_use = free = -1.0
    try:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
                )
            ]  # fmt: skip

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
        in_use, free = info.uordblks / 2**20, info.fordblks / 2**20
    except (OSError, AttributeError):
        pass
    return rss_mib(), len(gc.get_objects()), in_use, free, traced


def memory(client: Freeplay, recordings: int) -> list[tuple[float, int, float, float, float]]:
    samples = [heap_sample()]
    step = max(1, recordings // 10)
    with session_scope(client, project_id=PROJECT):
        for n in range(1, recordings + 1):
            record(all_messages=MESSAGES)
            if n % 100 == 0:
                # keep the producer just ahead of delivery: the queue must not be the test
                # (checked every 100: between two 10% samples it would fill the queue)
                while recorder_stats(client).pending > 2_000:
                    time.sleep(0.01)
            if n % step == 0:
                samples.append(heap_sample())
    assert flush(600)
    samples.append(heap_sample())
    return samples


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_line(shape: str, rounds: list[list[float]]) -> str:
    """record()'s median and p99 over every call of every round, then each round's."""
    pooled = [t for times in rounds for t in times]
    each = ", ".join(
        f"{statistics.median(times) * 1e6:.1f}/{percentile(times, 0.99) * 1e6:.0f}"
        for times in rounds
    )
    return (
        f"  record() on the caller's path, {shape}: median "
        f"{statistics.median(pooled) * 1e6:.1f} us, p99 {percentile(pooled, 0.99) * 1e6:.1f} us "
        f"({len(pooled)} calls; per round median/p99 us: {each})"
    )


CHILD = """
import os, signal, sys, time
from freeplay import Freeplay
import freeplay_integrations as fi
from freeplay_integrations._recording import recorder_for
mode, api_base, spool, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
client = Freeplay(freeplay_api_key=sys.argv[5], api_base=api_base)
fi.configure_recording(spool_path=spool, shutdown_timeout=1.0)
if mode == "drain":
    recorder_for(client)  # start-up drains what the earlier processes left
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if not os.path.exists(spool) and not any(
            n.startswith(os.path.basename(spool) + ".draining")
            for n in os.listdir(os.path.dirname(spool))
        ) and not recorder_for(client)._draining:
            break
    print(fi.recorder_stats(client).drained, flush=True)
    sys.exit(0)
with fi.session_scope(client, project_id=sys.argv[6]):
    for n in range(count):
        fi.record(all_messages=[{"role": "user", "content": str(n)}])
print("QUEUED", flush=True)
if mode == "kill":
    time.sleep(600)
"""


def child(mode: str, api_base: str, spool: str, count: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode, api_base, spool, str(count), API_KEY, PROJECT],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def spool_lines(spool: str) -> int:
    try:
        with open(spool) as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0


def processes(api_base: str, process: subprocess.Popen[str], count: int) -> list[str]:
    """Restart mid-outage; two processes on one spool; a hard kill. Markdown rows."""
    rows = []
    # A process restarted mid-outage: it exits (spooling), its successor drains.
    spool = os.path.join(tempfile.mkdtemp(prefix="freeplay-restart-"), "spool.jsonl")
    before = int(command(process, "count").split()[0])
    command(process, "down 3600")
    first = child("exit", api_base, spool, count)
    first.communicate(timeout=300)
    spooled = spool_lines(spool)
    command(process, "down 0")
    successor = child("drain", api_base, spool)
    successor.communicate(timeout=300)
    stored, dupes = (int(x) for x in command(process, "count").split())
    rows.append(
        f"| restart mid-outage | {count} | {spooled} spooled at exit | "
        f"{stored - before} delivered by the successor | {count - (stored - before)} lost, "
        f"{dupes} received twice (stored once: fixed IDs) |"
    )
    # Two processes on one spool: both start up at once and drain it.
    spool = os.path.join(tempfile.mkdtemp(prefix="freeplay-shared-"), "spool.jsonl")
    before, dupes_before = stored, dupes
    command(process, "down 3600")
    child("exit", api_base, spool, count).communicate(timeout=300)
    spooled = spool_lines(spool)
    command(process, "down 0")
    drains = [child("drain", api_base, spool) for _ in range(2)]
    drained = [int(d.communicate(timeout=300)[0].strip() or 0) for d in drains]
    stored, dupes = (int(x) for x in command(process, "count").split())
    rows.append(
        f"| two processes, one spool | {count} | {spooled} spooled | drained {drained} | "
        f"{stored - before} stored, {dupes - dupes_before} received twice (stored once: "
        "fixed IDs) |"
    )
    # A hard kill mid-outage: what was only in memory is lost.
    spool = os.path.join(tempfile.mkdtemp(prefix="freeplay-kill-"), "spool.jsonl")
    command(process, "down 3600")
    killed = child("kill", api_base, spool, count)
    assert killed.stdout is not None
    killed.stdout.readline()
    time.sleep(1.0)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    spooled = spool_lines(spool)
    command(process, "down 0")
    rows.append(
        f"| hard kill (SIGKILL) mid-outage | {count} | {spooled} spooled | - | "
        f"**{count - spooled} lost** (they were only in memory) |"
    )
    return rows


MARKDOWN_BEGIN = "<!-- delivery:begin (generated by bench/delivery.py; do not edit) -->"
MARKDOWN_END = "<!-- delivery:end -->"
#: The heading of the section before it had markers (replaced the first time).
MARKDOWN_OLD_HEADING = "## Outages and processes (bench/delivery.py)"


def markdown_section(latency: float, rows: list[str]) -> str:
    return (
        f"{MARKDOWN_BEGIN}\n\n{MARKDOWN_OLD_HEADING}\n\n"
        f"Generated on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Freeplay "
        f"{latency * 1000:.0f} ms away, default recorder settings; command: `.venv/bin/python "
        f"bench/delivery.py {' '.join(sys.argv[1:])}` (sizes: `make reliability "
        "RELIABILITY_OUTAGE=... RELIABILITY_PROCESSES=...`). Machine: 2 cores shared with "
        f"other work, load average {os.getloadavg()[0]:.1f} at the end."
        "\n\n| scenario | recorded | spool | delivered | lost |\n|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nThe local Freeplay stores a recording received twice once (completion and "
        'trace IDs are fixed before the first attempt); "received twice" counts those '
        "re-sends. A hard kill loses every operation held only in memory: Freeplay was down, "
        f"so none had been delivered or spooled yet.\n\n{MARKDOWN_END}"
    )


def write_markdown(path: str, section: str) -> None:
    """Replace this script's section of `path` (or append it)."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
    if MARKDOWN_BEGIN in text and MARKDOWN_END in text:
        head, rest = text.split(MARKDOWN_BEGIN, 1)
        text = head + section + rest.split(MARKDOWN_END, 1)[1]
    elif MARKDOWN_OLD_HEADING in text:
        head, rest = text.split(MARKDOWN_OLD_HEADING, 1)
        tail = rest[rest.find("\n<!--") :] if "\n<!--" in rest else "\n"
        text = head + section + "\n" + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recordings", type=int, default=1500)
    parser.add_argument("--sessions", type=int, default=150)
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--one-session", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--app-rate",
        type=float,
        default=300,
        help="recordings/s of the paced shape (0: skip it)",
    )
    parser.add_argument("--memory", type=int, default=0)
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="with --memory: trace Python's allocations too (slower), and show what grew",
    )
    parser.add_argument("--outage", type=float, default=0, help="seconds Freeplay is down")
    parser.add_argument("--outage-rate", type=float, default=50, help="recordings/s meanwhile")
    parser.add_argument("--queue-size", type=int, default=None, help="recorder queue_size")
    parser.add_argument(
        "--processes", type=int, default=0, help="process scenarios with this many recordings"
    )
    parser.add_argument(
        "--markdown", default=None, help="write the results into this file (its own section)"
    )
    args = parser.parse_args()

    spool = os.path.join(tempfile.mkdtemp(prefix="freeplay-bench-"), "spool.jsonl")
    configure_recording(spool_path=spool, queue_size=args.queue_size)
    with local_server(args.latency) as (api_base, process):
        client = Freeplay(freeplay_api_key=API_KEY, api_base=api_base)
        if args.outage or args.processes:
            rows = []
            if args.outage:
                result = outage(client, process, args.outage, args.outage_rate)
                print(f"outage {args.outage:.0f} s at {args.outage_rate:.0f}/s: {result}")
                rows.append(
                    f"| Freeplay down {args.outage:.0f} s under load ({args.outage_rate:.0f}/s, "
                    f"queue_size={args.queue_size or 10000}) | {result['recorded']:.0f} | "
                    f"{result['spooled']:.0f} spooled | {result['delivered']:.0f} delivered, "
                    f"the last {result['after_recovery_s'] - 5:.1f} s after the load ended "
                    f"(it went on 5 s past recovery) | {result['lost']:.0f} lost, "
                    f"{result['duplicates']:.0f} received twice (stored once: fixed IDs) |"
                )
            if args.processes:
                rows.extend(processes(api_base, process, args.processes))
            for row in rows:
                print(row)
            if args.markdown:
                write_markdown(args.markdown, markdown_section(args.latency, rows))
            return
        sdk_rates, ours_rates, one_rates, paced_rates = [], [], [], []
        burst_times: list[list[float]] = []
        paced_times: list[list[float]] = []
        for _ in range(args.rounds):
            sdk_rates.append(bare_sdk(client, args.recordings, args.sessions, args.threads))
            rate, times = recorder(client, args.recordings, args.sessions, args.threads)
            ours_rates.append(rate)
            burst_times.append(times)
            one_rates.append(one_session(client, args.one_session))
            if args.app_rate:
                rate, times = paced(
                    client, args.recordings, args.sessions, args.threads, args.app_rate
                )
                paced_rates.append(rate)
                paced_times.append(times)
        stats = recorder_stats(client)
        sdk, ours = statistics.median(sdk_rates), statistics.median(ours_rates)
        print(
            f"Freeplay {args.latency * 1000:.0f} ms away; {args.recordings} recordings over "
            f"{args.sessions} sessions, {args.threads} threads; median of {args.rounds} rounds"
        )
        print(f"  bare SDK, {args.threads} threads: {sdk:8.0f} recordings/s  {sdk_rates}")
        print(f"  recorder (defaults):      {ours:8.0f} recordings/s  ({ours / sdk:.2f}x)")
        print(f"  one session:              {statistics.median(one_rates):8.0f} recordings/s")
        print(latency_line("burst (every thread records flat out)", burst_times))
        if args.app_rate:
            print(
                f"  paced at {args.app_rate:.0f}/s: delivered "
                f"{statistics.median(paced_rates):.0f} recordings/s until flushed"
            )
            print(
                latency_line(
                    f"paced ({args.app_rate:.0f}/s from {args.threads} threads)", paced_times
                )
            )
        print(f"  load average: {os.getloadavg()[0]:.2f} (2 cores)")
        print(f"  spooled: {stats.spooled}  failed: {stats.failed}  lost: {stats.lost}")
        if args.memory:
            set_latency(process, 0.0)
            if args.tracemalloc:
                tracemalloc.start(1)
            samples = memory(client, args.memory)
            print(f"  memory over {args.memory} recordings, every 10% (then after the flush):")
            print("    RSS MiB:           " + " ".join(f"{s[0]:.1f}" for s in samples))
            print("    GC-tracked objects: " + " ".join(f"{s[1]}" for s in samples))
            print("    malloc in use MiB: " + " ".join(f"{s[2]:.1f}" for s in samples))
            print("    malloc free MiB:   " + " ".join(f"{s[3]:.1f}" for s in samples))
            if args.tracemalloc:
                print("    Python-held MiB:   " + " ".join(f"{s[4]:.2f}" for s in samples))
            print(f"  spooled: {recorder_stats(client).spooled}")


if __name__ == "__main__":
    main()
