"""What recording costs the request: `record()` (background) vs the SDK's own synchronous call.

Side by side, in one run, against the local Freeplay server running in its own process
(so that it does not share this process's GIL): the time one call spends on the caller's
path for

- `client.recordings.create(payload)`: the SDK sends inline, one HTTP round trip;
- `freeplay_integrations.record(...)` in background mode: queued for a worker thread.

Rounds are interleaved so that machine noise hits both alike; the median round is reported
with the ratio (target: at least 20x less for `record()`). Then the background recorder's
sustained throughput (recordings delivered per second, the producer kept just ahead of the
workers) with the process's resident memory sampled along the way, which must stay flat.

    .venv/bin/python bench/record_latency.py [--calls 300] [--rounds 5] [--seconds 5]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from freeplay import Freeplay
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations import (
    configure_recording,
    flush,
    record,
    recorder_stats,
    session_scope,
)

API_KEY = "bench-key"
PROJECT = "be4c0000-0000-4000-8000-00000000be4c"
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


@contextmanager
def local_server() -> Iterator[str]:
    """`python -m freeplay_integrations.local` on a free port, in memory; yields api_base."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "freeplay_integrations.local",
            "--port",
            "0",
            "--db",
            ":memory:",
            "--api-key",
            API_KEY,
            "--project-id",
            PROJECT,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(r"FREEPLAY_API_BASE=(\S+)", line)
            if match:
                yield match.group(1)
                return
        raise RuntimeError("the local Freeplay server did not start")
    finally:
        process.terminate()
        process.wait(10)


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def per_call(calls: int, call: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - started) / calls


def latency(client: Freeplay, calls: int, rounds: int) -> tuple[float, float]:
    sdk_times: list[float] = []
    ours_times: list[float] = []
    with session_scope(client, project_id=PROJECT) as session:

        def sdk() -> object:
            payload = RecordPayload(
                project_id=PROJECT, all_messages=MESSAGES, session_info=session.session_info
            )
            return client.recordings.create(payload)

        def ours() -> object:
            return record(all_messages=MESSAGES)

        per_call(20, sdk)  # warm up connections and code paths
        per_call(20, ours)
        flush()
        for _ in range(rounds):
            sdk_times.append(per_call(calls, sdk))
            ours_times.append(per_call(calls, ours))
            flush()  # deliver between rounds, off the clock, so workers do not compete
    return statistics.median(sdk_times), statistics.median(ours_times)


def throughput(client: Freeplay, seconds: float, ahead: int) -> None:
    print(f"\nSustained background throughput ({seconds:.0f} s, at most {ahead} queued):")
    start_stats = recorder_stats(client)
    samples: list[tuple[float, float, int]] = []
    started = time.perf_counter()
    next_sample = started
    with session_scope(client, project_id=PROJECT):
        while (now := time.perf_counter()) - started < seconds:
            if recorder_stats(client).pending < ahead:
                for _ in range(50):
                    record(all_messages=MESSAGES)
            else:
                time.sleep(0.001)
            if now >= next_sample:
                sent = recorder_stats(client).sent - start_stats.sent
                samples.append((now - started, rss_mib(), sent))
                next_sample += seconds / 10
    flush()
    elapsed = time.perf_counter() - started
    sent = recorder_stats(client).sent - start_stats.sent
    for at, rss, delivered in samples:
        print(f"  t={at:4.1f}s  delivered {delivered:7d}  RSS {rss:6.1f} MiB")
    steady = [rss for at, rss, _ in samples if at >= seconds / 5]
    print(
        f"  {sent} recordings delivered in {elapsed:.1f} s: {sent / elapsed:,.0f} recordings/s; "
        f"RSS after warm-up {min(steady):.1f}-{max(steady):.1f} MiB "
        f"(spread {max(steady) - min(steady):.1f} MiB)"
    )
    stats = recorder_stats(client)
    print(f"  counters: {stats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run length")
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="recorder ceiling (default: its own)"
    )
    args = parser.parse_args()
    with local_server() as api_base, tempfile.TemporaryDirectory() as spool_dir:
        client = Freeplay(freeplay_api_key=API_KEY, api_base=api_base)
        configure_recording(
            client,
            spool_path=os.path.join(spool_dir, "spool.jsonl"),
            max_concurrency=args.max_concurrency,
        )
        sdk, ours = latency(client, args.calls, args.rounds)
        print(f"Time on the caller's path per recording (median of {args.rounds} rounds):")
        print(f"  SDK recordings.create (sync HTTP)  {sdk * 1e6:9.1f} us")
        print(f"  record() background                {ours * 1e6:9.1f} us")
        print(f"  ratio                              {sdk / ours:9.1f}x less (target >= 20x)")
        throughput(client, args.seconds, ahead=1000)
        spooled = recorder_stats(client).spooled
        if spooled:
            print(f"  WARNING: {spooled} recordings were spooled")


if __name__ == "__main__":
    main()
