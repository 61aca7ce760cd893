"""What `FreeplaySessionSpanProcessor` adds per span, against a processor that does nothing.

Two tracer providers, identical but for their one span processor, start and end spans
inside a `session_scope` (the processor's work case: it tags every span), then inside a
`trace_scope` too (it adds the trace ID). Rounds are interleaved so that machine noise hits
both alike; the median of the per-round differences is the cost the processor adds (target:
at most 1 µs). The direct cost of `on_start` on fresh spans (started by the do-nothing
provider, each tagged once, as in real use) is reported too, in a session, in a trace and
outside a session (the early return), and with `hashed=True`.

    .venv/bin/python bench/otel_processor.py [--spans 5000] [--rounds 41]

The session and the trace are a local Freeplay's (`freeplay_integrations.local`): the one
trace is recorded when its scope closes, after the measurements.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from freeplay_integrations import session_scope, trace_scope
from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.opentelemetry import FreeplaySessionSpanProcessor


class NoopProcessor(SpanProcessor):
    """The baseline: a span processor that does nothing."""


#: The clock: this thread's CPU time, so that time the shared machine's other processes
#: take the CPU away is not counted (their effect on the caches still is).
clock = time.thread_time
#: Spans made per batch for `_on_start`: few enough to stay in the CPU caches, as a span
#: just created does.
BATCH = 200


def _spans(provider: TracerProvider, count: int) -> Callable[[], float]:
    tracer = provider.get_tracer("bench")

    def run() -> float:
        start = clock()
        for _ in range(count):
            tracer.start_span("s").end()
        return (clock() - start) / count

    return run


def _on_start(
    processor: SpanProcessor, provider: TracerProvider, count: int
) -> Callable[[], float]:
    """`on_start` alone, once on each of `count` fresh spans (made, `BATCH` at a time,
    before the clock starts)."""
    tracer = provider.get_tracer("bench")
    on_start = processor.on_start

    def run() -> float:
        elapsed = 0.0
        for _ in range(max(1, count // BATCH)):
            spans = [tracer.start_span("target") for _ in range(BATCH)]
            start = clock()
            for span in spans:
                on_start(span)  # type: ignore[arg-type]
            elapsed += clock() - start
            for span in spans:
                span.end()
        return elapsed / (max(1, count // BATCH) * BATCH)

    return run


@contextmanager
def _scopes(freeplay: LocalFreeplay, trace: bool) -> Iterator[None]:
    with ExitStack() as stack:
        stack.enter_context(session_scope(freeplay.client(), project_id=freeplay.project_id))
        if trace:
            stack.enter_context(trace_scope("bench", name="bench"))
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()

    noop_provider = TracerProvider()
    noop_provider.add_span_processor(NoopProcessor())
    freeplay_provider = TracerProvider()
    freeplay = FreeplaySessionSpanProcessor()
    freeplay_provider.add_span_processor(freeplay)
    hashed = FreeplaySessionSpanProcessor(hashed=True)

    noop_run = _spans(noop_provider, args.spans)
    freeplay_run = _spans(freeplay_provider, args.spans)
    on_start = _on_start(freeplay, noop_provider, args.spans)
    on_start_hashed = _on_start(hashed, noop_provider, args.spans)
    times: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        times.setdefault(name, []).append(value)

    with LocalFreeplay() as local:
        for _ in range(2):  # warm-up
            with _scopes(local, trace=True):
                noop_run(), freeplay_run(), on_start(), on_start_hashed()
        for _ in range(args.rounds):
            for trace in (False, True):
                where = "trace" if trace else "session"
                with _scopes(local, trace):
                    noop, tagged = noop_run(), freeplay_run()
                    add(f"noop {where}", noop)
                    add(f"freeplay {where}", tagged)
                    add(f"added {where}", tagged - noop)
                    add(f"on_start {where}", on_start())
                    if not trace:
                        add("on_start hashed", on_start_hashed())
            add("on_start outside", on_start())

    def us(name: str) -> float:
        return statistics.median(times[name]) * 1e6

    def spread(name: str) -> str:
        values = sorted(v * 1e6 for v in times[name])
        return f"(rounds {values[0]:.3f} .. {values[-1]:.3f})"

    print(
        f"{args.rounds} interleaved rounds of {args.spans} spans; medians per span"
        " (thread CPU time):"
    )
    print(f"  span start+end, do-nothing processor:    {us('noop session'):7.3f} µs")
    print(f"  span start+end, Freeplay processor:      {us('freeplay session'):7.3f} µs")
    print(
        f"  added by the Freeplay processor:         {us('added session'):7.3f} µs"
        f"  (target <= 1 µs) {spread('added session')}"
    )
    print(
        f"  added, inside a trace_scope:             {us('added trace'):7.3f} µs"
        f"  {spread('added trace')}"
    )
    print(f"  on_start alone, in a session:            {us('on_start session'):7.3f} µs")
    print(f"  on_start alone, in a trace_scope:        {us('on_start trace'):7.3f} µs")
    print(f"  on_start alone, hashed=True:             {us('on_start hashed'):7.3f} µs")
    print(f"  on_start alone, outside a session:       {us('on_start outside'):7.3f} µs")


if __name__ == "__main__":
    main()
