"""The local Freeplay's page assets ship as package data, in the wheel hatch builds."""

from __future__ import annotations

import zipfile
from pathlib import Path

import requests
from hatchling.builders.wheel import WheelBuilder

from freeplay_integrations.local import LocalFreeplay
from freeplay_integrations.local._page import STATIC, static_file

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_the_page_css_and_js(tmp_path: Path) -> None:
    built = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    wheel = Path(next(iter(built)))

    names = set(zipfile.ZipFile(wheel).namelist())

    for name in STATIC:
        assert f"freeplay_integrations/local/static/{name}" in names


def test_static_files_are_served_with_their_type() -> None:
    with LocalFreeplay() as server:
        for name, content_type in STATIC.items():
            response = requests.get(f"{server.url}/ui/static/{name}", timeout=5)
            assert response.status_code == 200
            assert response.headers["Content-Type"] == content_type
            assert response.content == static_file(name)
            assert response.content.strip()
        page = requests.get(server.url + "/", timeout=5)
        missing = requests.get(f"{server.url}/ui/static/_page.py", timeout=5)

    assert '<link rel="stylesheet" href="/ui/static/page.css">' in page.text
    assert "<style>" not in page.text
    assert "style-src 'self'" in page.headers["Content-Security-Policy"]
    assert missing.status_code == 404
