"""What a hard kill does to LPUSHes written to Redis but not yet read by it.

Why the Celery route waits for Redis's reply over TCP but not over a unix socket. For each
case, a child process connects to a `redis-server` started here, writes one LPUSH and
waits 0.2 s (its reply arrives), then Redis is stopped (SIGSTOP, so it reads nothing
more), the child writes `--commands` more LPUSHes and is SIGKILLed. Redis is then resumed,
and the list's length says how many of the commands it got:

- `tcp, reply unread`: the kernel closes the child's socket with the reply still in its
  receive queue, which sends a reset (RFC 2525);
- `tcp, reply read`: the same, but the child read the first reply, so the close is a FIN;
- `unix, reply unread`: as the first, over Redis's unix socket.

    .venv/bin/python bench/redis_reset.py [--commands 100]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery_apps import RedisServer

KEY = b"reset-test"


def _lpush(value: bytes) -> bytes:
    return b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(KEY),
        KEY,
        len(value),
        value,
    )


def _case(server: RedisServer, family: str, read_reply: bool, commands: int) -> int:
    """How many of `1 + commands` LPUSHes Redis holds after the writer was SIGKILLed."""
    inspect = server.client()
    inspect.delete(KEY)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        if family == "tcp":
            sock = socket.create_connection(("127.0.0.1", server.port))
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(server.socket_path)
        sock.sendall(_lpush(b"first"))
        time.sleep(0.2)
        if read_reply:
            sock.recv(64)
        os.kill(server.process.pid, signal.SIGSTOP)
        time.sleep(0.1)
        for _ in range(commands):
            sock.sendall(_lpush(b"x" * 100))
        os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    time.sleep(0.2)
    os.kill(server.process.pid, signal.SIGCONT)
    time.sleep(0.5)
    return int(inspect.llen(KEY))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--commands", type=int, default=100)
    args = parser.parse_args(argv)
    with RedisServer() as server:
        for family, read_reply in (("tcp", False), ("tcp", True), ("unix", False)):
            held = _case(server, family, read_reply, args.commands)
            name = f"{family}, reply {'read' if read_reply else 'unread'}"
            total = args.commands + 1
            print(f"{name:>20}: Redis holds {held} of {total} ({total - held} lost)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
