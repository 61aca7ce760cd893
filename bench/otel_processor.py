"""What `FreeplaySessionSpanProcessor` adds per span, against a processor that does nothing.

Two tracer providers, identical but for their one span processor, start and end spans
inside a `session_scope` (the processor's work case: it tags every span). Rounds are
interleaved so that machine noise hits both alike; the median per-span time of each is
reported, and the difference is the cost the processor adds (target: at most 1 µs). The
direct cost of `on_start` on a live span, with and without a bound session, is reported
too (the "outside a session" case is the early return).

    .venv/bin/python bench/otel_processor.py [--spans 20000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from freeplay import Freeplay
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from freeplay_integrations import session_scope
from freeplay_integrations.opentelemetry import FreeplaySessionSpanProcessor


class NoopProcessor(SpanProcessor):
    """The baseline: a span processor that does nothing."""


def _spans(provider: TracerProvider, count: int) -> Callable[[], float]:
    tracer = provider.get_tracer("bench")

    def run() -> float:
        start = time.perf_counter()
        for _ in range(count):
            tracer.start_span("s").end()
        return (time.perf_counter() - start) / count

    return run


def _on_start(processor: SpanProcessor, provider: TracerProvider, count: int) -> float:
    span = provider.get_tracer("bench").start_span("target")
    on_start = processor.on_start
    start = time.perf_counter()
    for _ in range(count):
        on_start(span)  # type: ignore[arg-type]
    elapsed = (time.perf_counter() - start) / count
    span.end()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    noop_provider = TracerProvider()
    noop_provider.add_span_processor(NoopProcessor())
    freeplay_provider = TracerProvider()
    freeplay = FreeplaySessionSpanProcessor()
    freeplay_provider.add_span_processor(freeplay)
    client = Freeplay(freeplay_api_key="bench", api_base="http://127.0.0.1:9/api")

    noop_run = _spans(noop_provider, args.spans)
    freeplay_run = _spans(freeplay_provider, args.spans)
    noop_times, freeplay_times, bound, unbound = [], [], [], []
    with session_scope(client, project_id="bench"):
        noop_run()
        freeplay_run()  # warm-up
        for _ in range(args.rounds):
            noop_times.append(noop_run())
            freeplay_times.append(freeplay_run())
            bound.append(_on_start(freeplay, noop_provider, args.spans))
    for _ in range(args.rounds):
        unbound.append(_on_start(freeplay, noop_provider, args.spans))

    def us(values: list[float]) -> float:
        return statistics.median(values) * 1e6

    added = [f - n for f, n in zip(freeplay_times, noop_times, strict=True)]
    print(f"{args.rounds} interleaved rounds of {args.spans} spans; medians per span:")
    print(f"  span start+end, do-nothing processor:   {us(noop_times):7.3f} µs")
    print(f"  span start+end, Freeplay processor:     {us(freeplay_times):7.3f} µs")
    print(f"  added by the Freeplay processor:        {us(added):7.3f} µs  (target <= 1 µs)")
    print(f"  on_start alone, in a session:           {us(bound):7.3f} µs")
    print(f"  on_start alone, outside a session:      {us(unbound):7.3f} µs")


if __name__ == "__main__":
    main()
