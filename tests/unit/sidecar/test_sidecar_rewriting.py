"""Prompt rewriting (contract 3.1) as a pure function."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from comfyui_sidecar.fetching import Fetch, apply_fetched
from comfyui_sidecar.loaders import loader_table
from comfyui_sidecar.rewriting import (
    NO_OUTPUT_MESSAGE,
    RewriteError,
    RewriteOptions,
    finish_directories,
    rewrite_prompt,
    safe_token,
)
from PIL import Image

OPTIONS = RewriteOptions(prepend_filenames=True, loaders=loader_table())


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, "PNG")
    return buffer.getvalue()


def save(prefix: Any = "out", **extra: Any) -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix, **extra}}


def test_prefix_is_prepended_or_replaced() -> None:
    prompt = {"9": save("ComfyUI")}
    assert rewrite_prompt(prompt, "r1", OPTIONS).prompt["9"]["inputs"]["filename_prefix"] == "r1_ComfyUI"
    replace = RewriteOptions(prepend_filenames=False, loaders=loader_table())
    assert rewrite_prompt(prompt, "r1", replace).prompt["9"]["inputs"]["filename_prefix"] == "r1"
    assert prompt["9"]["inputs"]["filename_prefix"] == "ComfyUI"  # the input is not mutated


def test_any_class_with_filename_prefix_is_an_output_unless_save_output_is_false() -> None:
    prompt = {
        "1": {"class_type": "VHS_VideoCombine", "inputs": {"filename_prefix": "v"}},
        "2": save(save_output=False),
    }
    result = rewrite_prompt(prompt, "x", OPTIONS)
    assert result.output_nodes == ["1"]
    assert result.prompt["2"]["inputs"]["filename_prefix"] == "x_out"


@pytest.mark.parametrize("prompt", [{}, {"1": save("")}, {"1": save(save_output=False)}, {"1": save(5)}])
def test_no_output_node_is_refused(prompt: dict[str, Any]) -> None:
    with pytest.raises(RewriteError) as caught:
        rewrite_prompt(prompt, "x", OPTIONS)
    assert caught.value.message == NO_OUTPUT_MESSAGE
    assert caught.value.location == "prompt"


def test_base64_image_becomes_an_inline_file() -> None:
    data = png()
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": base64.b64encode(data).decode()}},
        "2": save(),
    }
    result = rewrite_prompt(prompt, "req", OPTIONS)
    assert result.prompt["1"]["inputs"]["image"] == "req-1-image.png"
    assert [(f.relpath, f.decode()) for f in result.inline_files] == [("req-1-image.png", data)]


def test_data_uri_is_decoded_without_its_prefix() -> None:
    data = png()
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    prompt = {"1": {"class_type": "AnyClass", "inputs": {"image": uri}}, "2": save()}
    assert rewrite_prompt(prompt, "r", OPTIONS).inline_files[0].decode() == data


def test_unpadded_urlsafe_base64_is_accepted() -> None:
    data = png() + b"\xfb\xff"
    text = base64.urlsafe_b64encode(data).decode().rstrip("=")
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": text}}, "2": save()}
    assert rewrite_prompt(prompt, "r", OPTIONS).inline_files[0].decode() == data


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("bm90IGFuIGltYWdl", "Could not determine file type from base64 data"),
        ("$$$", "invalid base64"),
        ("data:text/plain,hello", "only base64 data: URIs"),
        ("ftp://host/a.png", "unsupported URL scheme"),
        ("../a.png", "without '..'"),
        ("/etc/a.png", "without '..'"),
        ("x.png [output]", "only files in the input directory"),
    ],
)
def test_bad_media_values_are_refused_with_their_location(value: str, fragment: str) -> None:
    prompt = {"7": {"class_type": "LoadImage", "inputs": {"image": value}}, "2": save()}
    with pytest.raises(RewriteError) as caught:
        rewrite_prompt(prompt, "r", OPTIONS)
    assert caught.value.location == "prompt.7.inputs.image"
    assert caught.value.message.startswith("Failed to download image for node 7: ")
    assert fragment in caught.value.message


def test_local_names_are_kept_and_listed_for_checking() -> None:
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "sub/pic.png"}}, "2": save()}
    result = rewrite_prompt(prompt, "r", OPTIONS)
    assert result.prompt["1"]["inputs"]["image"] == "sub/pic.png"
    assert [item.relpath for item in result.local_inputs] == ["sub/pic.png"]


def test_urls_become_fetches_for_media_and_models() -> None:
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "https://h/a.png"}},
        "2": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "https://h/unet.safetensors", "weight_dtype": "x"},
        },
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "s3://b/clipv.safetensors"}},
        "4": {
            "class_type": "CheckpointLoader",
            "inputs": {"ckpt_name": "local.ckpt", "config_name": "http://h/c.yaml"},
        },
        "5": {"class_type": "LoadVideo", "inputs": {"file": "https://h/v.mp4"}},
        "6": {"class_type": "LoadAudio", "inputs": {"audio": "https://h/a.wav"}},
        "9": save(),
    }
    fetches = rewrite_prompt(prompt, "r", OPTIONS).fetches
    assert fetches == [
        Fetch("https://h/a.png", "1", "image", "input", ""),
        Fetch("https://h/unet.safetensors", "2", "unet_name", "model", "diffusion_models"),
        Fetch("s3://b/clipv.safetensors", "3", "clip_name", "model", "clip_vision"),
        Fetch("http://h/c.yaml", "4", "config_name", "model", "configs"),
        Fetch("https://h/v.mp4", "5", "file", "input", ""),
        Fetch("https://h/a.wav", "6", "audio", "input", ""),
    ]


def test_extra_loaders_from_settings_are_used() -> None:
    options = RewriteOptions(True, loader_table({"MyLoader": {"weights": "my_models"}}))
    prompt = {"1": {"class_type": "MyLoader", "inputs": {"weights": "https://h/w.bin"}}, "9": save()}
    assert rewrite_prompt(prompt, "r", options).fetches[0].folder == "my_models"


def test_image_directory_goes_into_a_request_folder() -> None:
    data = png()
    entries = ["https://h/1.png", base64.b64encode(data).decode()]
    prompt = {"1": {"class_type": "VHS_LoadImages", "inputs": {"directory": entries}}, "9": save()}
    result = rewrite_prompt(prompt, "req-7", OPTIONS)
    assert result.fetches == [Fetch("https://h/1.png", "1", "directory", "input", "req-7", 0)]
    assert result.inline_files[0].relpath == "req-7/0001.png"
    applied = apply_fetched(result.prompt, {result.fetches[0]: "req-7/abc.png"})
    assert finish_directories(applied, result.directories)["1"]["inputs"]["directory"] == "req-7"


def test_linked_media_inputs_are_left_alone() -> None:
    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"video": ["5", 0]}}, "9": save()}
    result = rewrite_prompt(prompt, "r", OPTIONS)
    assert result.fetches == []
    assert result.inline_files == []


def test_safe_token_keeps_simple_ids_and_hashes_others() -> None:
    assert safe_token("abc-123_x") == "abc-123_x"
    odd = safe_token("id with spaces")
    assert odd.startswith("req-")
    assert len(odd) == 20
    assert safe_token("id with spaces") == odd


def image_bytes(fmt: str, size: tuple[int, int] = (16, 16)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, fmt)
    return buffer.getvalue()


FORMATS = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")]


@pytest.mark.parametrize(("fmt", "ext"), FORMATS)
@pytest.mark.parametrize("as_data_uri", [False, True])
def test_every_image_format_is_accepted_as_base64_and_data_uri(fmt: str, ext: str, as_data_uri: bool) -> None:
    data = image_bytes(fmt)
    text = base64.b64encode(data).decode()
    if fmt == "JPEG":
        assert text.startswith("/9j/")  # what made JPEG look like an absolute file name
    value = f"data:image/{fmt.lower()};base64,{text}" if as_data_uri else text
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": value}}, "2": save()}
    result = rewrite_prompt(prompt, "req", OPTIONS)
    assert result.prompt["1"]["inputs"]["image"] == f"req-1-image.{ext}"
    assert [(f.relpath, f.decode()) for f in result.inline_files] == [(f"req-1-image.{ext}", data)]
    assert result.local_inputs == []


def test_a_list_of_images_of_every_format_fills_the_request_folder() -> None:
    images = [image_bytes(fmt) for fmt, _ in FORMATS]
    entries = ["data:image/png;base64," + base64.b64encode(images[0]).decode()]
    entries.append(base64.b64encode(images[1]).decode())
    entries.append(base64.urlsafe_b64encode(images[2]).decode().rstrip("="))
    prompt = {"1": {"class_type": "VHS_LoadImages", "inputs": {"directory": entries}}, "9": save()}
    result = rewrite_prompt(prompt, "req-8", OPTIONS)
    assert [f.relpath for f in result.inline_files] == ["req-8/0000.png", "req-8/0001.jpg", "req-8/0002.webp"]
    assert [f.decode() for f in result.inline_files] == images


def test_long_slash_leading_base64_of_an_unknown_type_is_not_taken_for_a_file_name() -> None:
    value = base64.b64encode(b"\xfc" + bytes(5000)).decode()
    assert value.startswith("/")
    prompt = {"7": {"class_type": "LoadImage", "inputs": {"image": value}}, "2": save()}
    with pytest.raises(RewriteError) as caught:
        rewrite_prompt(prompt, "x", OPTIONS)
    assert "Could not determine file type" in caught.value.message
