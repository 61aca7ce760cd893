"""Every ```python block of README.md runs as it stands.

How a block is run:

- Each block runs in a fresh subprocess, in a fresh temporary directory (its cwd and the
  first entry of its `PYTHONPATH`), with `FREEPLAY_API_KEY`, `FREEPLAY_API_BASE` and
  `FREEPLAY_PROJECT_ID` pointing at a local Freeplay server started by this test, and
  `FREEPLAY_SPOOL_PATH` inside the temporary directory.
- A block whose first line is a comment naming a Python file (`# main.py`,
  `# conftest.py`, `# myapp/views.py`) is written to that file. The files of the blocks
  before it under the same heading are written too, so a section can show a small project
  file by file (an app, its `conftest.py`, its tests).
- A block of another language whose first line names a file the same way
  (`# pytest.ini`) is only written to that file, for the Python blocks after it.
- A block that defines a `test_...` function is run with pytest (and must pass, with at
  least one test); any other block with `python`.
- A block right after the line `<!-- fragment: <reason> -->` is not run: it cannot run
  alone (it needs a running service, or it is one piece of a file shown elsewhere). The
  reason is required.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from freeplay_integrations.local import LocalFreeplay

README = Path(__file__).resolve().parent.parent / "README.md"

FRAGMENT = re.compile(r"<!--\s*fragment:(?P<reason>.*?)-->")
HEADING = re.compile(r"#{1,6}\s+(?P<title>.+)")
FILE_COMMENT = re.compile(r"#\s*(?P<path>[\w./-]+\.(py|ini|toml|cfg))\b.*")
DEFINES_TEST = re.compile(r"^(async\s+)?def test_", re.MULTILINE)

#: Time limit of one block (a block under pytest starts servers and an interpreter).
BLOCK_TIMEOUT = 90


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    heading: str
    code: str
    fragment: str | None  # the reason, when marked as a fragment
    filename: str | None  # from a leading `# name.py` comment
    section_files: dict[str, str] = field(default_factory=dict)  # earlier files, same heading

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:40]
        return f"L{self.line}-{slug}"


def parse_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    heading = ""
    files: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = re.match(r"^(`{3,})(\S*)\s*$", line)
        if fence is None:
            match = HEADING.match(line)
            if match is not None:
                heading, files = match["title"].strip(), {}
            i += 1
            continue
        ticks, lang = fence.group(1), fence.group(2)
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        code = "\n".join(lines[i + 1 : end]) + "\n"
        first = code.splitlines()[0] if code.strip() else ""
        named = FILE_COMMENT.fullmatch(first.strip())
        if lang != "python" and named is not None:
            files[named["path"]] = code  # a config file of the section's project (pytest.ini)
        if lang == "python":
            previous = lines[i - 1].strip() if i > 0 else ""
            marker = FRAGMENT.fullmatch(previous)
            block = Block(
                line=i + 1,
                heading=heading,
                code=code,
                fragment=None if marker is None else marker["reason"].strip(),
                filename=None if named is None else named["path"],
                section_files=dict(files),
            )
            blocks.append(block)
            if block.filename is not None and block.fragment is None:
                files[block.filename] = code
        i = end + 1
    return blocks


BLOCKS = parse_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.fragment is None]


@pytest.fixture(scope="module")
def local_freeplay() -> Iterator[LocalFreeplay]:
    with LocalFreeplay() as server:
        yield server


def run_block(
    block: Block, tmp_path: Path, server: LocalFreeplay
) -> subprocess.CompletedProcess[str]:
    for name, code in block.section_files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code, encoding="utf-8")
    name = block.filename or (
        "test_readme_block.py" if DEFINES_TEST.search(block.code) else "readme_block.py"
    )
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(block.code, encoding="utf-8")

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FREEPLAY_", "DJANGO_", "PYTEST_"))
    }
    env.update(server.env())
    env["FREEPLAY_SPOOL_PATH"] = str(tmp_path / "spool" / "freeplay-spool.jsonl")
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    if DEFINES_TEST.search(block.code):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-p", "no:randomly", "--rootdir", str(tmp_path), name]
    else:
        command = [sys.executable, name]
    return subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs(block: Block, tmp_path: Path, local_freeplay: LocalFreeplay) -> None:
    result = run_block(block, tmp_path, local_freeplay)

    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 0, f"README.md line {block.line} failed:\n{output}"
    if DEFINES_TEST.search(block.code):
        assert re.search(r"\b[1-9]\d* passed\b", result.stdout), output
    assert not list(tmp_path.glob("freeplay-spool*.jsonl")), "a spool landed in the cwd"


def test_every_fragment_says_why() -> None:
    fragments = [b for b in BLOCKS if b.fragment is not None]

    assert all(b.fragment for b in fragments), [b.line for b in fragments if not b.fragment]


def test_the_readme_has_runnable_blocks() -> None:
    # The parser found the quick starts (a parser that finds nothing would pass vacuously).
    headings = {b.heading for b in RUNNABLE}

    assert len(RUNNABLE) >= 8
    assert any("Flask" in h for h in headings)
    assert any("ASGI" in h for h in headings)


def test_parser_understands_the_conventions() -> None:
    text = (
        "## A\n\n```python\n# main.py\nx = 1\n```\n\n"
        "<!-- fragment: needs a database -->\n```python\nimport db\n```\n\n"
        "```python\n# test_main.py\nfrom main import x\ndef test_x():\n    assert x == 1\n```\n"
        "## B\n\n```sh\nls\n```\n```python\nprint()\n```\n"
    )

    first, fragment, test, other = parse_blocks(text)

    assert (first.filename, first.section_files) == ("main.py", {})
    assert fragment.fragment == "needs a database"
    assert test.filename == "test_main.py"
    assert test.section_files == {"main.py": "# main.py\nx = 1\n"}
    assert (other.heading, other.section_files, other.filename) == ("B", {}, None)


def test_config_blocks_become_files_of_the_section() -> None:
    text = "## A\n```ini\n# pytest.ini\n[pytest]\n```\n```python\ndef test_x():\n    pass\n```\n"

    [block] = parse_blocks(text)

    assert block.section_files == {"pytest.ini": "# pytest.ini\n[pytest]\n"}


def test_links_and_images_work_on_pypi() -> None:
    # PyPI renders the README away from the repository: relative targets break there.
    targets = re.findall(r"\]\(([^)\s]+)\)", README.read_text(encoding="utf-8"))

    relative = [t for t in targets if not t.startswith(("https://", "http://", "#"))]
    assert targets and relative == []
