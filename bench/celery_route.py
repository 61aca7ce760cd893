"""How long `record()` takes on the request path with the Celery route, on a local Redis.

    .venv/bin/python bench/celery_route.py                 # 7 rounds of 5,000 records
    .venv/bin/python bench/celery_route.py --rounds 3 --records 2000

Each round times `record()` (a two-message completion inside `session_scope`) once per
call with `perf_counter_ns`, interleaving the routes round by round:

- `celery`: `configure_recording(via=app)`, a `redis-server` started here on a free
  loopback port (no worker: the queue only grows, as a broker does when workers lag);
  `record()` returns once Redis holds the message;
- `in-process`: the default route (the bounded queue of the recorder's own threads),
  for comparison. Freeplay is the local server; its answers do not matter here.

Prints median, p90, p99 and max per round, then the median over rounds of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery_apps import RedisServer

from freeplay_integrations import configure_recording, flush, record, session_scope
from freeplay_integrations.local import DEFAULT_PROJECT_ID, LocalFreeplay

MESSAGES = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France. " * 4},
]


def _round(client: object, records: int) -> list[float]:
    timings: list[float] = []
    with session_scope(client, project_id=DEFAULT_PROJECT_ID) as _:  # type: ignore[arg-type]
        for i in range(200):  # warm-up: connections, caches
            record(all_messages=MESSAGES, inputs={"i": i})
        for i in range(records):
            started = time.perf_counter_ns()
            record(all_messages=MESSAGES, inputs={"i": i})
            timings.append((time.perf_counter_ns() - started) / 1000)
    return timings


def _stats(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    n = len(ordered)
    return {
        "median": statistics.median(ordered),
        "p90": ordered[int(n * 0.90)],
        "p99": ordered[min(n - 1, int(n * 0.99))],
        "max": ordered[-1],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--records", type=int, default=5000)
    args = parser.parse_args(argv)
    from celery import Celery

    results: dict[str, list[dict[str, float]]] = {"celery": [], "in-process": []}
    spool_dir = tempfile.mkdtemp(prefix="freeplay-bench-")
    configure_recording(spool_path=os.path.join(spool_dir, "spool.jsonl"))
    with LocalFreeplay() as freeplay, RedisServer() as redis_server:
        routed = freeplay.client()
        configure_recording(routed, via=Celery("bench", broker=redis_server.url))
        local = freeplay.client()
        for n in range(args.rounds):
            for name, client in (("celery", routed), ("in-process", local)):
                stats = _stats(_round(client, args.records))
                flush(60)  # the in-process route's threads do not run into the next round
                results[name].append(stats)
                print(
                    f"round {n + 1} {name:>10}: "
                    + "  ".join(f"{k} {v:6.1f} µs" for k, v in stats.items()),
                    flush=True,
                )
        queued = redis_server.client().llen("celery")
    print(f"\nmessages in Redis: {queued}")
    print(f"median over {args.rounds} rounds of {args.records} record() calls each:")
    for name, rounds in results.items():
        summary = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        print(f"  {name:>10}: " + "  ".join(f"{k} {v:6.1f} µs" for k, v in summary.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
