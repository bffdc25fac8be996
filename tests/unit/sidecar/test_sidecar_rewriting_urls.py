"""URL values in prompts: parsed once (the typed URL travels with the fetch), refused with a 400-style
RewriteError when malformed, and schemes judged by the source registry's list."""

from __future__ import annotations

from typing import Any

import pytest
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.rewriting import RewriteError, RewriteOptions, rewrite_prompt

OPTIONS = RewriteOptions(prepend_filenames=True, loaders=loader_table())


def prompt_with(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "4": node,
        "9": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }


def checkpoint(value: str) -> dict[str, Any]:
    return {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": value}}


def image(value: str) -> dict[str, Any]:
    return {"class_type": "LoadImage", "inputs": {"image": value}}


@pytest.mark.parametrize(
    "value", ["file:///etc/passwd", "ftp://h/m.safetensors", "gopher://127.0.0.1:70/_x", "FILE://h/x"]
)
def test_a_model_url_of_an_unserved_scheme_is_refused_naming_the_registry_schemes(value: str) -> None:
    with pytest.raises(RewriteError) as err:
        rewrite_prompt(prompt_with(checkpoint(value)), "r", OPTIONS)
    assert err.value.location == "prompt.4.inputs"
    assert err.value.message.startswith("Failed to process model for node 4: unsupported URL scheme")
    assert "(supported schemes: http, https, s3)" in err.value.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("http://h:65536/m.safetensors", "port must be a number from 1 to 65535"),
        ("https://" + "a" * 64 + ".example/m.safetensors", "label is longer than 63 characters"),
        ("https://h\ud800.example/m.safetensors", "unpaired surrogate"),
    ],
)
def test_a_malformed_model_url_is_refused_by_the_one_parser(value: str, fragment: str) -> None:
    with pytest.raises(RewriteError) as err:
        rewrite_prompt(prompt_with(checkpoint(value)), "r", OPTIONS)
    assert err.value.location == "prompt.4.inputs"
    assert fragment in err.value.message


@pytest.mark.parametrize(
    "value", ["http://h:70000/a.png", "http://" + "b" * 70 + ".example/a.png", "s3://bucket\udc00/a.png"]
)
def test_a_malformed_media_url_is_refused(value: str) -> None:
    with pytest.raises(RewriteError) as err:
        rewrite_prompt(prompt_with(image(value)), "r", OPTIONS)
    assert err.value.location == "prompt.4.inputs.image"
    assert err.value.message.startswith("Failed to download image for node 4: Invalid URL")


def test_the_parsed_url_travels_with_the_fetch() -> None:
    out = rewrite_prompt(prompt_with(checkpoint("HTTPS://Models.Example/a.safetensors?t=1")), "r", OPTIONS)
    (fetch,) = out.fetches
    assert fetch.url == "HTTPS://Models.Example/a.safetensors?t=1"  # the cache key stays what was written
    assert fetch.ref is not None
    assert (fetch.ref.scheme, fetch.ref.host) == ("https", "models.example")
    s3 = rewrite_prompt(prompt_with(image("s3://bucket/in/a.png")), "r", OPTIONS).fetches[0]
    assert s3.ref is not None
    assert s3.ref.scheme == "s3"


def test_plain_model_names_are_left_alone() -> None:
    out = rewrite_prompt(prompt_with(checkpoint("sd15/model.safetensors")), "r", OPTIONS)
    assert out.fetches == []
    assert out.prompt["4"]["inputs"]["ckpt_name"] == "sd15/model.safetensors"
