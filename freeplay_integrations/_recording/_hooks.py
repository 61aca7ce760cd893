"""Process hooks: the exit flush, the fork reset, and the opt-in SIGTERM handler.

`atexit` and at-fork hooks are installed when the first recorder is created. No signal
handler is installed unless asked for: `install_sigterm_handler()`,
`configure_recording(handle_sigterm=True)`, or `FREEPLAY_HANDLE_SIGTERM=1`.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from types import FrameType

from .. import _context
from . import _scheduler, _spool, _transport
from ._scheduler import RecorderStats

__all__ = [
    "ENV_HANDLE_SIGTERM",
    "SIGTERM_EXIT_STATUS",
    "install_process_hooks",
    "install_sigterm_handler",
]

logger = logging.getLogger("freeplay_integrations.recording")

LOG_STATS = (
    "freeplay_integrations: recordings to %s at exit: queued=%d sent=%d retried=%d "
    "failed=%d spooled=%d cancelled=%d lost=%d"
)

#: Set to "1" to install the SIGTERM handler when the first recorder is created.
ENV_HANDLE_SIGTERM = "FREEPLAY_HANDLE_SIGTERM"

#: Exit status of a process stopped by the recorder's SIGTERM handler.
SIGTERM_EXIT_STATUS = 128 + signal.SIGTERM

_installed = False


def install_process_hooks() -> None:
    global _installed
    if os.environ.get(ENV_HANDLE_SIGTERM) == "1":
        install_sigterm_handler()
    if _installed:
        return
    _installed = True
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def install_sigterm_handler() -> bool:
    """Make SIGTERM a normal exit, so that the exit flush runs. Opt-in.

    Python's default action for SIGTERM ends the process at once: no `finally`, no
    `atexit`, and what the recorder holds in memory is lost. Call this (from the main
    thread) under a server that does not handle SIGTERM itself (waitress, a bare
    `wsgiref`, scripts). It is installed only over the default action; returns whether
    it was installed. A second SIGTERM ends the process at once.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            return True
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        pass
    return False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(SIGTERM_EXIT_STATUS)


def _at_exit() -> None:
    recorders = list(_scheduler._recorders)
    if not recorders:
        return
    _scheduler.close(_scheduler.shutdown_timeout())
    for recorder in recorders:
        stats = recorder.stats()
        if stats == RecorderStats():
            continue
        undelivered = stats.spooled or stats.lost or stats.failed or stats.pending
        logger.log(
            logging.WARNING if undelivered else logging.DEBUG,
            LOG_STATS,
            recorder.api_base,
            stats.queued,
            stats.sent,
            stats.retried,
            stats.failed,
            stats.spooled,
            stats.cancelled,
            stats.lost,
        )


def _after_fork_in_child() -> None:
    """The child starts with empty queues and no threads (the parent sends its own)."""
    _spool._lock = threading.Lock()
    _context._open_traces_lock = threading.Lock()
    _transport.after_fork()
    _scheduler.after_fork_in_child()


_scheduler.on_first_recorder.append(install_process_hooks)
