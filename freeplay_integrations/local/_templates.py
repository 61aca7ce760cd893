"""Prompt templates for the local Freeplay, read from a folder as the SDK's
`FilesystemTemplateResolver` reads it: `<folder>/freeplay/prompts/<project ID>/<environment>/
<template name>.json`. The SDK's own resolver does the reading, so the format is exactly the
one `Freeplay(template_resolver=FilesystemTemplateResolver(folder))` takes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["TemplateFolder"]


class TemplateFolder:
    """A folder of prompt templates; every lookup reads the files again (edits show at once)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        from freeplay.errors import FreeplayConfigurationError
        from freeplay.resources.prompts import FilesystemTemplateResolver

        self.path = Path(folder)
        try:
            self._resolver = FilesystemTemplateResolver(self.path)
        except FreeplayConfigurationError as error:  # no freeplay/prompts underneath
            raise ValueError(str(error)) from None

    def _project_dir(self, project_id: str) -> Path:
        return self.path / "freeplay" / "prompts" / project_id

    def by_name(self, project_id: str, name: str, environment: str) -> dict[str, Any] | None:
        if not (self._project_dir(project_id) / environment / f"{name}.json").is_file():
            return None
        template = self._resolver.get_prompt(project_id, name, environment)
        return _as_api(template, environment)

    def all(self, project_id: str, environment: str) -> list[dict[str, Any]] | None:
        if not (self._project_dir(project_id) / environment).is_dir():
            return None
        templates = self._resolver.get_prompts(project_id, environment).prompt_templates
        return [_as_api(t, environment) for t in templates]

    def by_version(
        self, project_id: str, template_id: str, version_id: str
    ) -> dict[str, Any] | None:
        project_dir = self._project_dir(project_id)
        if not project_dir.is_dir():
            return None
        for path in sorted(project_dir.glob("*/*.json")):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if (
                data.get("prompt_template_version_id") == version_id
                and data.get("prompt_template_id") == template_id
            ):
                environment = path.parent.name
                template = self._resolver.get_prompt(project_id, path.stem, environment)
                return _as_api(template, environment)
        return None

    def name_of_version(self, project_id: str, version_id: str) -> str | None:
        """The template name of a version ID (for the page), or None."""
        project_dir = self._project_dir(project_id)
        for path in sorted(project_dir.glob("*/*.json")) if project_dir.is_dir() else ():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if data.get("prompt_template_version_id") == version_id:
                name = data.get("prompt_template_name") or data.get("name")
                return str(name) if name else path.stem
        return None


def _as_api(template: Any, environment: str) -> dict[str, Any]:
    """A `PromptTemplate` as the API's JSON (what the SDK's APITemplateResolver decodes)."""
    body: dict[str, Any] = dataclasses.asdict(template)
    body["environment"] = environment
    return body
