"""The stand-in's HTTP routes over real HTTP: errors, files, queue, history, info, websocket details."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import aiohttp
from comfyui_standin.testing import RunningStandin, run_standin, write_model, write_png
from PIL import Image
from standin_helpers import golden, post_prompt, receive, until_done

EMPTY_SAVE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t/x"}},
}


def sleeping(seconds: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "StandinSleep", "inputs": {"image": ["1", 0], "seconds": seconds, "steps": 50}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slow"}},
    }


# ---------------------------------------------------------------- POST /prompt errors


async def test_prompt_errors_over_http(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    recorded = golden("errors_validation.json")
    async with session.post(
        f"{comfy.url}/prompt", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 500
        assert r.content_type == "text/plain"
        assert await r.text() == recorded["malformed_json"]["body"]
    async with session.post(f"{comfy.url}/api/prompt", json={"client_id": "x"}) as r:
        assert r.status == 400
        assert await r.json() == recorded["no_prompt_key"]["body"]
    async with session.post(f"{comfy.url}/prompt", json={"prompt": {"1": {"class_type": "NoSuchNode"}}}) as r:
        assert r.status == 400
        assert await r.json() == recorded["unknown_class_type"]["body"]
    async with session.post(f"{comfy.url}/prompt", json=["a list"]) as r:
        assert r.status == 400
        assert (await r.json())["error"]["type"] == "invalid_prompt"
    # the counter also moved on for the two well-formed invalid posts (not for unparsable bodies)
    assert (await post_prompt(session, comfy.url, EMPTY_SAVE))["number"] == 2


async def test_origin_mismatch_is_403_with_empty_body(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{comfy.url}/prompt", headers={"Origin": "http://evil.example"}) as r:
        assert r.status == 403
        assert await r.read() == b""
    async with session.get(f"{comfy.url}/prompt", headers={"Origin": comfy.url}) as r:
        assert r.status == 200
        assert await r.json() == {"exec_info": {"queue_remaining": 0}}


async def test_client_prompt_id_and_extra_data_are_kept(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{comfy.ws_url}?clientId=me") as ws:
        await receive(ws)
        posted = await post_prompt(
            session, comfy.url, EMPTY_SAVE, client_id="me", prompt_id="my-own-id-123", extra_data={"k": 1}
        )
        assert posted["prompt_id"] == "my-own-id-123"
        await until_done(ws, "my-own-id-123")
    async with session.get(f"{comfy.url}/history/my-own-id-123") as r:
        entry = (await r.json())["my-own-id-123"]
    assert entry["prompt"][3] == {"k": 1, "client_id": "me"}
    assert entry["prompt"][4] == ["2"]


# ---------------------------------------------------------------- history


async def test_history_paging_delete_clear(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(f"{comfy.ws_url}?clientId=h") as ws:
        await receive(ws)
        ids = []
        for i in range(3):
            prompt = {
                **EMPTY_SAVE,
                "2": {**EMPTY_SAVE["2"], "inputs": {"images": ["1", 0], "filename_prefix": f"p{i}"}},
            }
            ids.append((await post_prompt(session, comfy.url, prompt, client_id="h"))["prompt_id"])
        for prompt_id in ids:
            await until_done(ws, prompt_id)
    async with session.get(f"{comfy.url}/history", params={"max_items": "2"}) as r:
        assert list(await r.json()) == ids[1:]
    async with session.get(f"{comfy.url}/history", params={"max_items": "1", "offset": "0"}) as r:
        assert list(await r.json()) == ids[:1]
    async with session.get(f"{comfy.url}/history", params={"max_items": "x"}) as r:
        assert r.status == 400
    async with session.post(f"{comfy.url}/history", json={"delete": [ids[0]]}) as r:
        assert r.status == 200
    async with session.get(f"{comfy.url}/history") as r:
        assert list(await r.json()) == ids[1:]
    async with session.post(f"{comfy.url}/history", json={"clear": True}) as r:
        assert r.status == 200
    async with session.get(f"{comfy.url}/api/history/{ids[2]}") as r:
        assert await r.json() == {}


# ---------------------------------------------------------------- queue and interrupt


async def test_queue_clear_and_global_interrupt(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    async with run_standin(tmp_path) as comfy, session.ws_connect(f"{comfy.ws_url}?clientId=q") as ws:
        await receive(ws)
        running = await post_prompt(session, comfy.url, sleeping(30), client_id="q")
        pending = await post_prompt(session, comfy.url, EMPTY_SAVE, client_id="q")
        while (await receive(ws))["type"] != "progress":
            pass
        async with session.get(f"{comfy.url}/prompt") as r:
            assert await r.json() == {"exec_info": {"queue_remaining": 2}}
        async with session.post(f"{comfy.url}/queue", json={"clear": True}) as r:
            assert r.status == 200
        async with session.get(f"{comfy.url}/queue") as r:
            queue = await r.json()
        assert queue["queue_pending"] == []
        assert queue["queue_running"][0][1] == running["prompt_id"]
        started = asyncio.get_running_loop().time()
        async with session.post(f"{comfy.url}/interrupt") as r:
            assert r.status == 200
        messages = await until_done(ws, running["prompt_id"], timeout_s=5)
        assert asyncio.get_running_loop().time() - started < 2
        assert "execution_interrupted" in [m["type"] for m in messages]
        async with session.get(f"{comfy.url}/history/{pending['prompt_id']}") as r:
            assert await r.json() == {}


async def test_failing_node_reports_execution_error(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    prompt = {
        "1": {"class_type": "StandinFail", "inputs": {"message": "deliberate failure"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}},
    }
    async with session.ws_connect(f"{comfy.ws_url}?clientId=f") as ws:
        await receive(ws)
        posted = await post_prompt(session, comfy.url, prompt, client_id="f")
        messages = await until_done(ws, posted["prompt_id"])
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert error["exception_message"] == "deliberate failure\n"
    assert (error["exception_type"], error["node_id"], error["node_type"]) == (
        "RuntimeError",
        "1",
        "StandinFail",
    )
    assert [m["type"] for m in messages[-3:]] == ["execution_error", "status", "executing"]


# ---------------------------------------------------------------- files


async def test_view_rules(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    write_png(comfy.dirs.output / "sub" / "a.png", (4, 4), (255, 0, 0))
    write_png(comfy.dirs.input / "in.png", (4, 4))
    (comfy.dirs.temp / "t.png").write_bytes((comfy.dirs.input / "in.png").read_bytes())
    cases = [
        ({"filename": "a.png", "subfolder": "sub"}, 200),
        ({"filename": "a.png", "subfolder": "sub", "type": "output"}, 200),
        ({"filename": "in.png [input]"}, 200),
        ({"filename": "t.png", "type": "temp"}, 200),
        ({"filename": "missing.png"}, 404),
        ({}, 404),
        ({"filename": "../x.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "a\x00.png"}, 400),
        ({"filename": "a.png", "subfolder": "sub\x00"}, 403),
        ({"filename": "a.png", "type": "models"}, 400),
        ({"filename": "passwd", "subfolder": "../../../../etc"}, 403),
    ]
    for params, status in cases:
        async with session.get(f"{comfy.url}/view", params=params) as r:
            assert r.status == status, params
    async with session.get(
        f"{comfy.url}/view", params={"filename": "a.png", "subfolder": "sub", "preview": "webp;50"}
    ) as r:
        assert r.content_type == "image/webp"
        assert Image.open(io.BytesIO(await r.read())).format == "WEBP"
    async with session.get(
        f"{comfy.url}/api/view", params={"filename": "a.png", "subfolder": "sub", "channel": "a"}
    ) as r:
        img = Image.open(io.BytesIO(await r.read()))
        assert (img.mode, img.getpixel((0, 0))) == ("L", 255)


async def upload(
    session: aiohttp.ClientSession, url: str, name: str, data: bytes, **fields: str
) -> tuple[int, Any]:
    form = aiohttp.FormData()
    form.add_field("image", data, filename=name, content_type="image/png")
    for key, value in fields.items():
        form.add_field(key, value)
    async with session.post(f"{url}/upload/image", data=form) as r:
        return r.status, (await r.json() if r.status == 200 else await r.text())


async def test_upload_like_recording(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    recorded = golden("upload.json")
    one = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(one, format="PNG")
    two = io.BytesIO()
    Image.new("RGB", (4, 4), (9, 9, 9)).save(two, format="PNG")
    assert await upload(session, comfy.url, "rig_input.png", one.getvalue(), overwrite="true") == tuple(
        recorded["overwrite_true"]
    )
    same = await upload(session, comfy.url, "rig_input.png", one.getvalue())
    assert same == tuple(recorded["same_bytes_no_overwrite"])
    other = await upload(session, comfy.url, "rig_input.png", two.getvalue())
    assert other == tuple(recorded["same_name_other_bytes"])
    assert (comfy.dirs.input / "rig_input (1).png").read_bytes() == two.getvalue()
    sub = await upload(session, comfy.url, "sub_in.png", one.getvalue(), subfolder="rigsub")
    assert sub == tuple(recorded["subfolder"])
    overwritten = await upload(session, comfy.url, "rig_input.png", two.getvalue(), overwrite="1")
    assert overwritten[1]["name"] == "rig_input.png"
    assert (comfy.dirs.input / "rig_input.png").read_bytes() == two.getvalue()
    to_temp = await upload(session, comfy.url, "t.png", one.getvalue(), type="temp")
    assert to_temp[1] == {"name": "t.png", "subfolder": "", "type": "temp"}
    # aiohttp's client percent-encodes "/" in file names, which is what the recording shows
    assert await upload(session, comfy.url, "../evil.png", one.getvalue()) == tuple(recorded["dotdot"])
    raw = (
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="../evil.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + one.getvalue() + b"\r\n--B--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=B"}
    async with session.post(f"{comfy.url}/upload/image", data=raw, headers=headers) as r:
        assert r.status == 400
    assert (await upload(session, comfy.url, "ok.png", one.getvalue(), subfolder="../../x"))[0] == 400
    assert (await upload(session, comfy.url, "ok.png", one.getvalue(), type="models"))[0] == 400
    async with session.post(f"{comfy.url}/upload/image", data=aiohttp.FormData({"x": "1"})) as r:
        assert r.status == 400
    assert not (comfy.dirs.base / "evil.png").exists()


async def test_uploaded_image_is_usable_by_load_image(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    png = io.BytesIO()
    Image.new("RGB", (6, 6), (0, 0, 0)).save(png, format="PNG")
    status, body = await upload(session, comfy.url, "up.png", png.getvalue(), subfolder="s")
    assert status == 200
    for name in ("s/up.png", f"{body['subfolder']}/{body['name']} [input]"):
        prompt = {
            "1": {"class_type": "LoadImage", "inputs": {"image": name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
        }
        assert (await post_prompt(session, comfy.url, prompt))["node_errors"] == {}


# ---------------------------------------------------------------- info routes and websocket


async def test_info_routes(comfy: RunningStandin, session: aiohttp.ClientSession) -> None:
    write_model(comfy.dirs.models / "checkpoints" / "sub" / "c.safetensors")
    write_model(comfy.dirs.models / "embeddings" / "emb.pt")
    recorded = golden("object_info-subset.json")
    async with session.get(f"{comfy.url}/object_info") as r:
        info = await r.json()
    assert set(recorded) <= set(info)
    for name, entry in recorded.items():
        assert set(info[name]) == set(entry), name
        assert info[name]["input_order"] == entry["input_order"], name
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] == ["sub/c.safetensors"]
    async with session.get(f"{comfy.url}/api/object_info/SaveImage") as r:
        assert await r.json() == {"SaveImage": recorded["SaveImage"]}
    async with session.get(f"{comfy.url}/object_info/NoSuchNode") as r:
        assert (r.status, await r.json()) == (200, {})
    async with session.get(f"{comfy.url}/models") as r:
        assert "checkpoints" in await r.json()
    async with session.get(f"{comfy.url}/models/checkpoints") as r:
        assert await r.json() == ["sub/c.safetensors"]
    async with session.get(f"{comfy.url}/models/nope") as r:
        assert r.status == 404
    async with session.get(f"{comfy.url}/embeddings") as r:
        assert await r.json() == ["emb"]
    async with session.get(f"{comfy.url}/system_stats") as r:
        stats = await r.json()
    assert set(stats["system"]) >= {
        "os",
        "ram_total",
        "ram_free",
        "comfyui_version",
        "python_version",
        "argv",
    }
    assert stats["devices"][0]["type"] == "cpu"
    async with session.get(f"{comfy.url}/features") as r:
        assert await r.json() == {"supports_preview_metadata": True, "max_upload_size": 104857600}


async def test_websocket_sid_feature_flags_and_replacement(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(comfy.ws_url) as anonymous:
        first = await receive(anonymous)
        assert len(first["data"]["sid"]) == 32
    async with session.ws_connect(f"{comfy.ws_url}?clientId=same") as old:
        await receive(old)
        await old.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        reply = await receive(old)
        assert reply == {
            "type": "feature_flags",
            "data": {"supports_preview_metadata": True, "max_upload_size": 104857600},
        }
        async with session.ws_connect(f"{comfy.ws_url.replace('/ws', '/api/ws')}?clientId=same") as new:
            await receive(new)
            posted = await post_prompt(session, comfy.url, EMPTY_SAVE, client_id="same")
            messages = await until_done(new, posted["prompt_id"])
            assert "executed" in [m["type"] for m in messages]
        # the replaced socket is no longer addressed at all (ComfyUI keeps one socket per sid)
        leftovers = []
        for _ in range(50):
            try:
                leftovers.append(await old.receive_json(timeout=0.3))
            except TimeoutError:
                break
        assert leftovers == []


async def test_reconnect_during_prompt_is_told_the_current_node(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{comfy.ws_url}?clientId=r") as ws:
        await receive(ws)
        posted = await post_prompt(session, comfy.url, sleeping(30), client_id="r")
        while (await receive(ws))["type"] != "progress":
            pass
    async with session.ws_connect(f"{comfy.ws_url}?clientId=r") as again:
        assert (await receive(again))["data"]["sid"] == "r"
        assert await receive(again) == {"type": "executing", "data": {"node": "2"}}
        async with session.post(f"{comfy.url}/interrupt", json={"prompt_id": posted["prompt_id"]}) as r:
            assert r.status == 200
        messages = await until_done(again, posted["prompt_id"], timeout_s=5)
    assert "execution_interrupted" in [m["type"] for m in messages]


async def test_models_from_extra_paths_run_end_to_end(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    shared = tmp_path / "shared"
    write_model(shared / "checkpoints" / "sd.safetensors")
    write_model(shared / "loras" / "style.safetensors")
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        f"shared:\n  base_path: {shared}\n  is_default: true\n  checkpoints: checkpoints/\n  loras: loras/\n"
    )
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd.safetensors"}},
        "2": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["1", 0], "lora_name": "style.safetensors", "strength_model": 0.5},
        },
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["2", 0],
                "seed": 7,
                "steps": 4,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["3", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "t2i/cat"}},
    }
    async with run_standin(tmp_path / "comfy", extra_model_paths_configs=[extra]) as comfy:
        async with session.get(f"{comfy.url}/object_info/LoraLoaderModelOnly") as r:
            info = await r.json()
        assert info["LoraLoaderModelOnly"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]
        async with session.ws_connect(f"{comfy.ws_url}?clientId=m") as ws:
            await receive(ws)
            posted = await post_prompt(session, comfy.url, prompt, client_id="m")
            messages = await until_done(ws, posted["prompt_id"])
        assert [m["data"]["value"] for m in messages if m["type"] == "progress"] == [1, 2, 3, 4]
        assert messages[-3]["type"] == "execution_success"
        assert (comfy.dirs.output / "t2i" / "cat_00001_.png").is_file()
        missing = {**prompt, "1": {**prompt["1"], "inputs": {"ckpt_name": "gone.safetensors"}}}
        async with session.post(f"{comfy.url}/prompt", json={"prompt": missing}) as r:
            assert r.status == 400
            error = (await r.json())["node_errors"]["1"]["errors"][0]
        assert error["type"] == "value_not_in_list"
        assert error["details"] == "ckpt_name: 'gone.safetensors' not in ['sd.safetensors']"


async def test_free_while_running_applies_after_the_prompt(
    comfy: RunningStandin, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(f"{comfy.ws_url}?clientId=fr") as ws:
        await receive(ws)
        first = await post_prompt(session, comfy.url, sleeping(0.3), client_id="fr")
        async with session.post(f"{comfy.url}/free", json={"free_memory": True}) as r:
            assert r.status == 200
        await until_done(ws, first["prompt_id"])
        again = await post_prompt(session, comfy.url, sleeping(0.3), client_id="fr")
        messages = await until_done(ws, again["prompt_id"])
    cached = next(m for m in messages if m["type"] == "execution_cached")
    assert cached["data"]["nodes"] == []  # the cache was reset once the first prompt finished
