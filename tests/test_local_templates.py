"""The local Freeplay serves prompt templates from a FilesystemTemplateResolver folder."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from freeplay import Freeplay
from freeplay.errors import FreeplayClientError
from freeplay.resources.prompts import FilesystemTemplateResolver
from freeplay.resources.recordings import RecordPayload

from freeplay_integrations.local import DEFAULT_PROJECT_ID, LocalFreeplay

TEMPLATE_ID = "2a3b4c5d-6e7f-4a8b-9c0d-1e2f3a4b5c6d"
VERSION_ID = "7f6e5d4c-3b2a-4190-8f7e-6d5c4b3a2910"


def write_templates(folder: Path, project_id: str) -> None:
    env = folder / "freeplay" / "prompts" / project_id / "latest"
    env.mkdir(parents=True)
    template = {
        "format_version": 3,
        "prompt_template_id": TEMPLATE_ID,
        "prompt_template_version_id": VERSION_ID,
        "prompt_template_name": "greeter",
        "project_id": project_id,
        "content": [
            {"role": "system", "content": "Greet {{name}} warmly."},
            {"kind": "history"},
            {"role": "user", "content": "{{question}}"},
        ],
        "metadata": {"flavor": "openai_chat", "model": "gpt-4o-mini", "params": {"max_tokens": 50}},
    }
    (env / "greeter.json").write_text(json.dumps(template))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalFreeplay]:
    write_templates(tmp_path, DEFAULT_PROJECT_ID)
    with LocalFreeplay(templates=tmp_path) as local:
        yield local


def test_get_formatted_through_the_api_matches_the_filesystem_resolver(
    server: LocalFreeplay, tmp_path: Path
) -> None:
    variables = {"name": "Ada", "question": "How are you?"}
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    over_http = server.client().prompts.get_formatted(
        server.project_id, "greeter", "latest", variables, history=history
    )
    local_files = Freeplay(
        freeplay_api_key="k",
        api_base=server.api_base,
        template_resolver=FilesystemTemplateResolver(tmp_path),
    ).prompts.get_formatted(server.project_id, "greeter", "latest", variables, history=history)

    assert over_http.llm_prompt == local_files.llm_prompt
    assert over_http.llm_prompt[0] == {"role": "system", "content": "Greet Ada warmly."}
    assert over_http.prompt_info.template_name == "greeter"
    assert over_http.prompt_info.prompt_template_version_id == VERSION_ID
    assert over_http.prompt_info.environment == "latest"
    assert over_http.prompt_info.model == "gpt-4o-mini"


def test_all_of_an_environment_and_by_version(server: LocalFreeplay) -> None:
    client = server.client()
    [template] = client.prompts.get_all(server.project_id, "latest").prompt_templates
    assert template.prompt_template_name == "greeter"
    by_version = client.prompts.get_by_version_id(server.project_id, TEMPLATE_ID, VERSION_ID)
    assert by_version.prompt_info.template_name == "greeter"
    assert client.prompts.get_all(server.project_id, "prod").prompt_templates == []


def test_unknown_template_is_404(server: LocalFreeplay) -> None:
    with pytest.raises(FreeplayClientError, match="404"):
        server.client().prompts.get(server.project_id, "nope", "latest")
    url = f"{server.api_base}/v2/projects/{server.project_id}/prompt-templates/name/nope"
    response = requests.get(
        url, headers={"Authorization": f"Bearer {server.api_key}"}, timeout=5
    )
    assert response.status_code == 404
    assert "nope" in response.json()["message"]


def test_a_server_without_templates_answers_404() -> None:
    with LocalFreeplay() as local, pytest.raises(FreeplayClientError, match="404"):
        local.client().prompts.get(local.project_id, "greeter", "latest")


def test_a_folder_without_freeplay_prompts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="freeplay/prompts"):
        LocalFreeplay(templates=tmp_path)


def test_completion_with_prompt_info_shows_the_template_on_the_page(
    server: LocalFreeplay,
) -> None:
    client = server.client()
    formatted = client.prompts.get_formatted(
        server.project_id, "greeter", "latest", {"name": "Ada", "question": "Hi?"}, history=[]
    )
    session = client.sessions.create()
    client.recordings.create(
        RecordPayload(
            project_id=server.project_id,
            all_messages=[*formatted.llm_prompt, {"role": "assistant", "content": "Hello Ada"}],
            session_info=session.session_info,
            prompt_version_info=formatted.prompt_info,
            completion_id=uuid.uuid4(),
        )
    )
    [stored] = server.completions()
    assert stored["prompt_info"]["template_name"] == "greeter"
    page = requests.get(f"{server.url}/sessions/{session.session_id}", timeout=5).text
    assert 'class="prompt-info"' in page
    for shown in ("greeter", VERSION_ID, "latest"):
        assert shown in page
