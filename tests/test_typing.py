"""The typed public API: `mypy --strict` and pyright over a user-style file with every
documented form (no error), and over deliberate typos (each one reported)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

# The typed contract (positional-only `app`, `configure()`'s factory for `add_middleware`)
# matches Starlette's own typing from 0.41, whose `add_middleware` takes a factory called
# with the app positionally. Starlette 0.36 to 0.40 run every form (the middleware accepts
# `app=` at run time) but type `add_middleware` for classes taking `app` by keyword; the
# README says so. tox's `oldest` env installs those releases.
_STARLETTE = tuple(int(part) for part in version("starlette").split(".")[:2])
pytestmark = pytest.mark.skipif(
    _STARLETTE < (0, 41),
    reason=f"typing is checked against Starlette >= 0.41 (installed {version('starlette')})",
)

HERE = Path(__file__).parent / "typing_cases"
USER_CODE = HERE / "user_code.py"
TYPOS = HERE / "typos.py"
BIN = Path(sys.executable).parent


def _typo_lines() -> set[int]:
    lines = TYPOS.read_text().splitlines()
    return {number for number, line in enumerate(lines, 1) if line.endswith("# error")}


def _mypy(path: Path) -> tuple[int, str]:
    result = subprocess.run(
        [
            str(BIN / "mypy"),
            "--strict",
            "--no-incremental",
            "--cache-dir=/dev/null",
            "--config-file=",
            "--python-version=3.10",
            "--explicit-package-bases",  # the file alone, not the checkout above it
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # As a user's project: the package is the installed one, not this checkout's
        # source, which mypy would check as the user's own code from the repo root.
        cwd=HERE,
    )
    return result.returncode, result.stdout + result.stderr


def _pyright(path: Path) -> dict[str, object]:
    pyright = BIN / "pyright"
    if not pyright.exists():
        pytest.fail("pyright is a test dependency: pip install 'freeplay-integrations[test]'")
    result = subprocess.run(
        [str(pyright), "--outputjson", "--pythonpath", sys.executable, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_mypy_strict_accepts_every_documented_form() -> None:
    status, output = _mypy(USER_CODE)
    assert status == 0, output


def test_mypy_strict_reports_every_typo() -> None:
    status, output = _mypy(TYPOS)
    assert status == 1, output
    reported = {int(line.split(":")[1]) for line in output.splitlines() if ": error:" in line}
    assert reported == _typo_lines(), output


def test_pyright_accepts_every_documented_form() -> None:
    report = _pyright(USER_CODE)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]  # type: ignore[attr-defined]
    assert errors == [], errors


def test_pyright_reports_every_typo() -> None:
    report = _pyright(TYPOS)
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]  # type: ignore[attr-defined]
    reported = {d["range"]["start"]["line"] + 1 for d in errors}
    assert reported == _typo_lines(), errors
