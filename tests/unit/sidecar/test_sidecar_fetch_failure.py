"""How a failed download is reported: comfyui-api's wording and location (contract 2.4)."""

from __future__ import annotations

import pytest
from comfyui_sidecar.fetching import Fetch, FetchError, describe_failure


@pytest.mark.parametrize(
    ("item", "message", "location"),
    [
        (
            Fetch("u", "3", "image", "input", ""),
            "Failed to download image for node 3: boom",
            "prompt.3.inputs.image",
        ),
        (
            Fetch("u", "5", "video", "input", ""),
            "Failed to download video for node 5: boom",
            "prompt.5.inputs.video",
        ),
        (
            Fetch("u", "5", "file", "input", ""),
            "Failed to download video for node 5: boom",
            "prompt.5.inputs.file",
        ),
        (
            Fetch("u", "6", "audio", "input", ""),
            "Failed to download audio for node 6: boom",
            "prompt.6.inputs.audio",
        ),
        (
            Fetch("u", "7", "directory", "input", "req", index=1),
            "Failed to download images for node 7: boom",
            "prompt.7.inputs.directory",
        ),
        (
            Fetch("u", "4", "ckpt_name", "model", "checkpoints"),
            "Failed to process model for node 4: boom",
            "prompt.4.inputs",
        ),
    ],
)
def test_failure_names_the_node_and_input(item: Fetch, message: str, location: str) -> None:
    assert describe_failure(FetchError("boom", item=item)) == (message, location)


def test_failure_without_an_item_keeps_its_message() -> None:
    assert describe_failure(FetchError("URL downloads are not enabled")) == (
        "URL downloads are not enabled",
        "prompt",
    )
