"""`new_session_id`: UUID v4s from a pool of `os.urandom` reads, unique across threads and
across a fork."""

from __future__ import annotations

import os
import sys
import threading
import uuid

import pytest

from freeplay_integrations._ids import IDS_PER_READ, new_session_id, parse_session_id, top_up


def test_ids_are_canonical_uuid4s_and_never_repeat() -> None:
    ids = [new_session_id() for _ in range(IDS_PER_READ * 20 + 3)]
    assert len(set(ids)) == len(ids)
    for session_id in ids:
        assert parse_session_id(session_id) == session_id
        assert uuid.UUID(session_id).version == 4
        assert uuid.UUID(session_id).variant == uuid.RFC_4122
        assert str(uuid.UUID(session_id)) == session_id
    # Every random digit varies: the variant digit over 8, 9, a, b, the others over 0-f.
    for position in range(36):
        seen = {session_id[position] for session_id in ids}
        if position in (8, 13, 18, 23):
            assert seen == {"-"}
        elif position == 14:
            assert seen == {"4"}
        elif position == 19:
            assert seen == set("89ab")
        else:
            assert seen == set("0123456789abcdef"), position


def test_threads_drawing_at_once_get_distinct_ids() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(len(drawn))

    def draw(into: list[str]) -> None:
        start.wait()
        into.extend(new_session_id() for _ in range(IDS_PER_READ * 10))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [session_id for into in drawn for session_id in into]
    assert len(set(every)) == len(every) == 8 * IDS_PER_READ * 10


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_hand_out_the_parents_pooled_ids() -> None:
    new_session_id()  # the pool now holds IDS_PER_READ - 1 IDs, inherited by a child
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.write(write, ",".join(new_session_id() for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split(",")
    os.waitpid(pid, 0)
    parent = [new_session_id() for _ in range(IDS_PER_READ)]
    assert len(child) == 3 and not set(child) & set(parent), (child, sys.platform)


def test_the_pool_is_refilled_from_a_source_that_keeps_the_gil() -> None:
    """`os.urandom` is a system call that releases the GIL; on the request path, taking it
    back behind busy threads cost the refilling `record()` calls milliseconds
    (bench/delivery.py). Whether a call releases the GIL is not observable reliably from
    Python, so this checks the source: OpenSSL's CSPRNG, which holds it."""
    import ssl

    from freeplay_integrations import _ids

    assert _ids._random_bytes is ssl.RAND_bytes
    assert len(_ids._random_bytes(32)) == 32


def test_top_up_refills_a_low_pool_ahead_of_need() -> None:
    from freeplay_integrations import _ids

    _ids._pool.clear()
    top_up()
    pooled = list(_ids._pool)
    assert len(pooled) == IDS_PER_READ and len(set(pooled)) == IDS_PER_READ
    assert all(parse_session_id(i) == i for i in pooled)
    top_up()  # full enough: nothing added
    assert list(_ids._pool) == pooled
    drawn = [new_session_id() for _ in range(IDS_PER_READ)]
    assert drawn == pooled  # what was topped up is what the request path gets
