"""Fail unless every dependency floor declared in pyproject.toml is what is installed.

Run in tox's `oldest` environment (`tox -e py310-oldest`): for each `name>=X.Y[.Z]` in
`[project] dependencies` and `[project.optional-dependencies]`, the installed version of
`name` must be X.Y[.Z] (a floor given as X.Y accepts any X.Y.* patch release).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
FLOOR = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)\s*(\[[^\]]*\])?\s*>=\s*(?P<floor>[0-9][0-9.]*)")


def floors() -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    found: dict[str, str] = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match is None:
            continue
        name = match["name"].lower()
        if found.setdefault(name, match["floor"]) != match["floor"]:
            raise SystemExit(f"{name}: two different floors in pyproject.toml")
    return found


def matches(installed: str, floor: str) -> bool:
    parts = floor.split(".")
    return installed.split(".")[: len(parts)] == parts


def main() -> int:
    problems = []
    for name, floor in sorted(floors().items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name}: not installed (floor {floor})")
            continue
        status = "ok" if matches(installed, floor) else "NOT THE FLOOR"
        print(f"{name:12s} floor {floor:8s} installed {installed:10s} {status}")
        if status != "ok":
            problems.append(f"{name}: installed {installed}, floor {floor}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
