"""Command line: `python -m freeplay_integrations replay [SPOOL]`.

Sends again what the recorder wrote to its spool (recordings that could not be queued or
delivered), and rewrites the spool with only what still fails. Completion and trace IDs
were fixed when they were recorded, so what had arrived after all is not duplicated.
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import sys
from collections.abc import Sequence

from ._config import ENV_API_BASE, ENV_API_KEY
from ._recording import DEFAULT_SPOOL_PATH, ENV_SPOOL_PATH, replay_spool

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m freeplay_integrations",
        description="Tools for freeplay-integrations.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    replay = commands.add_parser(
        "replay",
        help="send again what the recorder wrote to its spool file",
        description=(
            "Send again the operations in a spool file. What is delivered, or refused by "
            "Freeplay for good, leaves the spool; what still cannot be delivered stays."
        ),
    )
    replay.add_argument(
        "spool",
        nargs="?",
        default=None,
        metavar="SPOOL",
        help=f"the spool file (default: ${ENV_SPOOL_PATH}, else {DEFAULT_SPOOL_PATH})",
    )
    replay.add_argument(
        "--api-key", default=None, help=f"Freeplay API key (default: ${ENV_API_KEY})"
    )
    replay.add_argument(
        "--api-base",
        default=None,
        help=f"Freeplay API base URL (default: ${ENV_API_BASE}); the API key is sent to "
        "this URL only, never to one named in the spool",
    )
    replay.add_argument(
        "--attempts", type=int, default=3, help="attempts per operation (default: %(default)s)"
    )
    replay.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="time limit of one attempt, seconds (default: %(default)s)",
    )
    return parser


def _replay(args: argparse.Namespace) -> int:
    path = args.spool or os.environ.get(ENV_SPOOL_PATH) or DEFAULT_SPOOL_PATH
    api_key = args.api_key or os.environ.get(ENV_API_KEY)
    if not api_key:
        print(
            f"No Freeplay API key: pass --api-key or set {ENV_API_KEY}.",
            file=sys.stderr,
        )
        return 2
    api_base = args.api_base or os.environ.get(ENV_API_BASE)
    if not api_base:
        print(
            f"No Freeplay API base URL: pass --api-base or set {ENV_API_BASE}. (The API key "
            "is never sent to a URL named only in the spool.)",
            file=sys.stderr,
        )
        return 2
    if not os.path.exists(path) and not glob.glob(glob.escape(path) + ".draining-*"):
        print(f"Nothing to replay: {path} does not exist.")
        return 0
    result = replay_spool(
        path,
        api_key=api_key,
        api_base=api_base,
        attempts=max(1, args.attempts),
        attempt_timeout=max(0.1, args.timeout),
    )
    if result.busy:
        print(f"{path} is being drained by another process; try again later.")
        return 1
    print(
        f"Replayed {path}: {result.read} operation(s) read, {result.sent} sent, "
        f"{result.failed} refused by Freeplay (dropped; see the log above), "
        f"{result.kept} kept in the spool for a later replay, {result.skipped} skipped "
        "(duplicates, or their session is deleted later in the spool)."
    )
    if result.unreadable:
        print(f"{result.unreadable} unreadable line(s) moved to {path}.bad.")
    return 0 if result.kept == result.failed == result.lost == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.command == "replay":
        return _replay(args)
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
