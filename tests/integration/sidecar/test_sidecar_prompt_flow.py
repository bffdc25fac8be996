"""Contract 3.1-3.4 and 3.8: rewriting, ComfyUI errors, output collection, conversion, stats."""

from __future__ import annotations

import base64
import io
import json
import os

import aiohttp
import pytest
from comfyui_standin.testing import write_png
from PIL import Image
from sidecar_harness import RunningSidecar, empty_image_prompt


def png_b64(size: tuple[int, int] = (20, 10), color: tuple[int, int, int] = (10, 200, 30)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(image_b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(image_b64)))


def invert_prompt(image_value: str) -> dict[str, object]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image_value}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }


async def post(
    http: aiohttp.ClientSession, sidecar: RunningSidecar, body: dict[str, object]
) -> tuple[int, dict]:  # type: ignore[type-arg]
    async with http.post(f"{sidecar.url}/prompt", json=body) as response:
        return response.status, await response.json()


async def test_sync_prompt_returns_images_filenames_and_stats(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, sidecar, {"prompt": empty_image_prompt(24, 16, batch=2), "id": "sync-1"})
    assert status == 200
    assert body["prompt"]["2"]["inputs"]["filename_prefix"] == "sync-1_test"
    assert body["filenames"] == ["sync-1_test_00001_.png", "sync-1_test_00002_.png"]
    assert [decode(image).size for image in body["images"]] == [(24, 16), (24, 16)]
    stats = body["stats"]
    assert set(stats) == {
        "comfy_execution",
        "preprocess_time",
        "comfy_round_trip_time",
        "postprocess_time",
        "upload_time",
        "total_time",
    }
    execution = stats["comfy_execution"]
    assert execution["end"] >= execution["start"] > 0
    assert set(execution["nodes"]) == {"1", "2"}
    # outputs are deleted after delivery
    assert not list(sidecar.settings.output_dir.glob("sync-1_*"))


async def test_default_id_is_a_uuid_and_prepend_false_replaces_the_prefix(
    standin,
    http: aiohttp.ClientSession,  # type: ignore[no-untyped-def]
) -> None:
    from sidecar_harness import run_sidecar, sidecar_settings

    async with run_sidecar(sidecar_settings(standin.url, standin.dirs, prepend_filenames=False)) as sc:
        status, body = await post(http, sc, {"prompt": empty_image_prompt()})
    assert status == 200
    assert len(body["id"]) == 36
    assert body["prompt"]["2"]["inputs"]["filename_prefix"] == body["id"]
    assert body["filenames"] == [f"{body['id']}_00001_.png"]


async def test_base64_input_is_written_used_and_removed(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, sidecar, {"prompt": invert_prompt(png_b64()), "id": "b64"})
    assert status == 200, body
    assert body["prompt"]["1"]["inputs"]["image"] == "b64-1-image.png"
    pixel = decode(body["images"][0]).convert("RGB").getpixel((0, 0))
    assert pixel == (245, 55, 225)
    assert not (sidecar.settings.input_dir / "b64-1-image.png").exists()


async def test_data_uri_prefix_is_stripped_before_decoding(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    uri = "data:image/png;base64," + png_b64((8, 8))
    status, body = await post(http, sidecar, {"prompt": invert_prompt(uri), "id": "datauri"})
    assert status == 200, body
    assert decode(body["images"][0]).size == (8, 8)


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
@pytest.mark.parametrize("as_data_uri", [False, True], ids=["base64", "data-uri"])
async def test_png_jpeg_and_webp_inputs_run_as_base64_and_data_uri(
    sidecar: RunningSidecar, http: aiohttp.ClientSession, fmt: str, ext: str, as_data_uri: bool
) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 6), (250, 250, 250)).save(buffer, fmt, quality=95)
    text = base64.b64encode(buffer.getvalue()).decode()
    value = f"data:image/{fmt.lower()};base64,{text}" if as_data_uri else text
    request_id = f"fmt-{ext}-{int(as_data_uri)}"
    status, body = await post(http, sidecar, {"prompt": invert_prompt(value), "id": request_id})
    assert status == 200, body
    assert body["prompt"]["1"]["inputs"]["image"] == f"{request_id}-1-image.{ext}"
    image = decode(body["images"][0]).convert("RGB")
    assert image.size == (12, 6)
    assert max(image.getpixel((3, 3))) < 30  # white inverted: ComfyUI got the decoded picture


async def test_file_name_in_the_input_directory_is_used_as_is(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    write_png(sidecar.settings.input_dir / "sub" / "here.png", (6, 4))
    status, body = await post(http, sidecar, {"prompt": invert_prompt("sub/here.png")})
    assert status == 200, body
    assert body["prompt"]["1"]["inputs"]["image"] == "sub/here.png"
    assert decode(body["images"][0]).size == (6, 4)


async def test_traversal_absolute_and_symlinked_names_are_refused(
    sidecar: RunningSidecar, http: aiohttp.ClientSession, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    outside = write_png(tmp_path / "secret.png")
    os.symlink(outside, sidecar.settings.input_dir / "link.png")
    for value in ("../secret.png", "/etc/passwd.png", "a/../../secret.png", "link.png"):
        status, body = await post(http, sidecar, {"prompt": invert_prompt(value)})
        assert status == 400, value
        assert body["location"] == "prompt.1.inputs.image"
        assert body["error"].startswith("Failed to download image for node 1: ")


async def test_missing_input_file_is_400(sidecar: RunningSidecar, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, sidecar, {"prompt": invert_prompt("nothere.png")})
    assert status == 400
    assert "no such file in the input directory: nothere.png" in body["error"]


async def test_bad_base64_is_400_with_location(sidecar: RunningSidecar, http: aiohttp.ClientSession) -> None:
    status, body = await post(http, sidecar, {"prompt": invert_prompt("bm90IGFuIGltYWdl")})  # "not an image"
    assert status == 400
    assert body == {
        "error": "Failed to download image for node 1: Failed to parse base64 encoded file: "
        "Could not determine file type from base64 data",
        "location": "prompt.1.inputs.image",
    }
    status, body = await post(http, sidecar, {"prompt": invert_prompt("@@@notbase64@@@")})
    assert status == 400
    assert "invalid base64" in body["error"]


async def test_prompt_without_output_node_is_400(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}}
    }
    status, body = await post(http, sidecar, {"prompt": prompt})
    assert status == 400
    assert body == {
        "error": 'Prompt must contain a node with a "filename_prefix" input, such as "SaveImage"',
        "location": "prompt",
    }


async def test_url_input_without_cache_is_a_clear_400(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, sidecar, {"prompt": invert_prompt("https://example.invalid/a.png")})
    assert status == 400
    assert "URL downloads are not enabled" in body["error"]


async def test_comfyui_validation_error_is_400_with_node_errors(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = empty_image_prompt()
    prompt["1"]["inputs"]["width"] = -5
    status, body = await post(http, sidecar, {"prompt": prompt})
    assert status == 400
    assert body["location"] == "prompt"
    assert body["error"].startswith("ComfyUI rejected the prompt")
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"


async def test_comfyui_execution_error_reports_node_class_and_message(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = empty_image_prompt()
    prompt["3"] = {
        "class_type": "StandinFail",
        "inputs": {"message": "boom at node three", "image": ["1", 0]},
    }
    prompt["2"]["inputs"]["images"] = ["3", 0]
    status, body = await post(http, sidecar, {"prompt": prompt})
    assert status == 500
    assert body["comfy_error"]["node_id"] == "3"
    assert body["comfy_error"]["node_type"] == "StandinFail"
    assert "boom at node three" in body["comfy_error"]["exception_message"]
    assert "boom at node three" in body["message"]


async def test_outputs_honour_subfolder_and_temp_in_node_order(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = {
        "10": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "sub/dir/x"}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}},
        "1": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "first"}},
    }
    status, body = await post(http, sidecar, {"prompt": prompt, "id": "order"})
    assert status == 200, body
    # JavaScript key order: integer-like ids ascending
    assert list(body["prompt"]) == ["1", "2", "3", "10"]
    names = body["filenames"]
    assert names[0] == "order_first_00001_.png"
    assert names[1] == "x_00001_.png"  # saved under order_sub/dir/
    assert names[2].endswith(".png")
    assert "temp" in names[2]
    assert len(body["images"]) == 3
    assert not list(sidecar.settings.output_dir.rglob("x_00001_.png"))
    assert not list(sidecar.settings.temp_dir.rglob("*.png"))


async def test_convert_output_to_jpeg_and_webp_with_options(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    status, body = await post(
        http,
        sidecar,
        {"prompt": empty_image_prompt(), "convert_output": {"format": "jpeg", "options": {"quality": 50}}},
    )
    assert status == 200
    assert body["filenames"][0].endswith(".jpeg")
    assert decode(body["images"][0]).format == "JPEG"
    assert body["convert_output"]["options"]["chromaSubsampling"] == "4:2:0"
    webp = {"format": "webp", "options": {"lossless": True, "effort": 6, "quality": 90}}
    status, body = await post(http, sidecar, {"prompt": empty_image_prompt(), "convert_output": webp})
    assert status == 200
    assert body["filenames"][0].endswith(".webp")
    assert decode(body["images"][0]).format == "WEBP"
    assert body["convert_output"]["options"]["lossless"] is True
    assert body["convert_output"]["options"]["effort"] == 6
    assert "chromaSubsampling" not in body["convert_output"]["options"]


async def test_interrupt_stops_a_running_prompt(sidecar: RunningSidecar, http: aiohttp.ClientSession) -> None:
    import asyncio

    prompt = empty_image_prompt()
    prompt["3"] = {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": 20, "steps": 200}}
    prompt["2"]["inputs"]["images"] = ["3", 0]
    task = asyncio.create_task(post(http, sidecar, {"prompt": prompt, "id": "to-stop"}))
    for _ in range(200):
        await asyncio.sleep(0.05)
        async with http.post(f"{sidecar.url}/interrupt", json={"id": "to-stop"}) as response:
            if response.status == 200:
                assert await response.json() == {"id": "to-stop", "interrupted": "success"}
                break
    status, body = await asyncio.wait_for(task, 10)
    assert status == 500
    assert body["message"] == "Prompt execution interrupted"


async def test_large_outputs_are_streamed_with_an_exact_length(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 700, "height": 700, "batch_size": 2, "color": 0},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 3, "strength": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "big"}},
    }
    async with http.post(f"{sidecar.url}/prompt", json={"prompt": prompt}) as response:
        assert response.status == 200
        raw = await response.read()
        assert int(response.headers["Content-Length"]) == len(raw)
    body = json.loads(raw)
    assert len(body["images"][0]) > 1_000_000  # larger than one encoding slice
    assert [decode(image).size for image in body["images"]] == [(700, 700), (700, 700)]
    assert body["filenames"][0].startswith(body["id"] + "_big_")


async def test_interrupt_removes_a_queued_prompt(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    import asyncio
    import time

    def slow(seconds: float) -> dict[str, object]:
        prompt = empty_image_prompt()
        prompt["3"] = {
            "class_type": "StandinSleep",
            "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 20},
        }
        prompt["2"]["inputs"]["images"] = ["3", 0]
        return prompt

    first = asyncio.create_task(post(http, sidecar, {"prompt": slow(1.5), "id": "running"}))
    await asyncio.sleep(0.3)
    second = asyncio.create_task(post(http, sidecar, {"prompt": slow(1.4), "id": "waiting"}))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    async with http.post(f"{sidecar.url}/interrupt", json={"id": "waiting"}) as response:
        assert response.status == 200
    status, body = await asyncio.wait_for(second, 5)
    assert status == 500
    assert body["message"] == "Prompt execution interrupted"
    assert not first.done()  # the queued prompt ended before the running one finished
    assert time.monotonic() - started < 1.0
    status, _ = await asyncio.wait_for(first, 10)
    assert status == 200
