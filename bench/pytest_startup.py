"""What having freeplay-integrations installed adds to pytest's start-up in a project that
does not use it.

A temporary project with one trivial test is run with `python -m pytest` in fresh
subprocesses, in interleaved rounds: once with the package's pytest plugin (as every
project that has the package installed gets it), once with it disabled by
`-p no:freeplay_local` (what pytest costs without it). Everything else installed in this
interpreter's environment loads in both. Prints the median wall time of each and their
ratio; the target is <= 1.05x.

    .venv/bin/python bench/pytest_startup.py [--rounds 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "plugin installed": [],
    "plugin disabled": ["-p", "no:freeplay_local"],
}


def run_once(project: Path, extra: list[str]) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DJANGO_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=project,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pytest-startup-") as tmp:
        project = Path(tmp)
        (project / "test_app.py").write_text("def test_it():\n    assert 1 + 1 == 2\n")
        (project / "pytest.ini").write_text("[pytest]\n")
        for extra in CASES.values():  # warm the OS caches and the bytecode of both
            run_once(project, extra)
        times: dict[str, list[float]] = {name: [] for name in CASES}
        for round_ in range(args.rounds):
            order = list(CASES.items())
            if round_ % 2:
                order.reverse()
            for name, extra in order:
                times[name].append(run_once(project, extra))

    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name:17s} median {medians[name] * 1000:7.1f} ms"
            f"  (min {min(values) * 1000:.1f}, max {max(values) * 1000:.1f}, n={len(values)})"
        )
    ratio = medians["plugin installed"] / medians["plugin disabled"]
    print(f"ratio installed/disabled: {ratio:.3f}x (target <= 1.05x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
