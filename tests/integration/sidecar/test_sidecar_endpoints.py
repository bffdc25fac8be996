"""Contract section 2: endpoints, status codes and error shapes (sidecar <-> stand-in over real HTTP)."""

from __future__ import annotations

import aiohttp
import yaml
from sidecar_harness import RunningSidecar, empty_image_prompt


async def test_health_and_ready_answer_with_the_contract_shape(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sidecar.url}/health") as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await response.text() == '{"version":"1.18.0","status":"healthy"}'
    async with http.get(f"{sidecar.url}/ready") as response:
        assert response.status == 200
        assert await response.json() == {"version": "1.18.0", "status": "ready"}


async def test_models_lists_every_folder_with_its_files(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    folder = sidecar.settings.model_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a.safetensors").write_bytes(b"x")
    async with http.get(f"{sidecar.url}/models") as response:
        assert response.status == 200
        body = await response.json()
    assert body["checkpoints"] == ["a.safetensors"]
    assert "custom_nodes" not in body
    assert list(body) == sorted(body)


async def test_docs_serve_openapi_json_yaml_and_a_page(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sidecar.url}/docs/json") as response:
        document = await response.json()
    assert document["openapi"].startswith("3.")
    assert document["info"] == {"title": "ComfyUI API", "version": "1.18.0"}
    request_schema = document["components"]["schemas"]["PromptRequest"]
    assert "prompt" in request_schema["required"]
    assert set(document["paths"]["/prompt"]["post"]["responses"]) >= {"200", "202", "400", "413", "415"}
    async with http.get(f"{sidecar.url}/docs/yaml") as response:
        assert yaml.safe_load(await response.text())["paths"].keys() == document["paths"].keys()
    async with http.get(f"{sidecar.url}/docs") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "/prompt" in await response.text()


async def test_malformed_json_is_400_with_error_and_location(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{sidecar.url}/prompt", data=b'{"prompt": ', headers=headers) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"].startswith("Bad Request: malformed JSON")
    assert body["location"] == "body"


async def test_missing_prompt_is_400_naming_the_field(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sidecar.url}/prompt", json={"id": "x"}) as response:
        assert response.status == 400
        body = await response.json()
    assert body == {"error": "Bad Request: prompt: Field required", "location": "prompt"}


async def test_wrong_types_are_400_with_the_path(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    bad = {"prompt": {"1": {"class_type": 5, "inputs": {}}}, "convert_output": {"format": "gif"}}
    async with http.post(f"{sidecar.url}/prompt", json=bad) as response:
        assert response.status == 400
        body = await response.json()
    assert body["location"] == "prompt.1.class_type"
    assert "convert_output.format" in body["error"]


async def test_body_that_is_not_an_object_is_400(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sidecar.url}/prompt", json=[1, 2]) as response:
        assert response.status == 400
        assert (await response.json())["location"] == "body"


async def test_wrong_content_type_is_415_in_fastify_shape(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{sidecar.url}/prompt", data=b"prompt=1", headers={"Content-Type": "text/plain"}
    ) as r:
        assert r.status == 415
        assert await r.json() == {
            "statusCode": 415,
            "code": "FST_ERR_CTP_INVALID_MEDIA_TYPE",
            "error": "Unsupported Media Type",
            "message": "Unsupported Media Type",
        }


async def test_oversized_body_is_413(standin, http: aiohttp.ClientSession) -> None:  # type: ignore[no-untyped-def]
    from sidecar_harness import run_sidecar, sidecar_settings

    async with run_sidecar(sidecar_settings(standin.url, standin.dirs, max_body_size_mb=1)) as small:
        payload = b'{"prompt": "' + b"a" * (1024 * 1024 + 10) + b'"}'
        headers = {"Content-Type": "application/json"}
        async with http.post(f"{small.url}/prompt", data=payload, headers=headers) as response:
            assert response.status == 413
            body = await response.json()
    assert body["code"] == "FST_ERR_CTP_BODY_TOO_LARGE"
    assert body["message"] == "Request body is too large"


async def test_unknown_route_is_404_in_fastify_shape(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sidecar.url}/nope") as response:
        assert response.status == 404
        assert await response.json() == {
            "message": "Route GET:/nope not found",
            "error": "Not Found",
            "statusCode": 404,
        }


async def test_unknown_fields_are_dropped_from_the_echo(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    prompt = empty_image_prompt()
    prompt["1"]["extra_node_key"] = 1
    body = {"prompt": prompt, "id": "echo-1", "surprise": True, "s3": {"bucket": "b", "prefix": "p"}}
    async with http.post(f"{sidecar.url}/prompt", json=body) as response:
        assert response.status == 200
        result = await response.json()
    assert list(result) == ["prompt", "id", "images", "filenames", "stats"]
    assert "extra_node_key" not in result["prompt"]["1"]


async def test_interrupt_unknown_id_is_404_and_missing_id_is_400(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{sidecar.url}/interrupt", json={"id": "nobody"}) as response:
        assert response.status == 404
        assert await response.json() == {"id": "nobody", "interrupted": "failed"}
    async with http.post(f"{sidecar.url}/interrupt", json={}) as response:
        assert response.status == 400
        assert (await response.json())["location"] == "id"


async def test_metrics_expose_requests_queue_depth_and_ready(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{sidecar.url}/health"):
        pass
    async with http.get(f"{sidecar.url}/no-such-route-{id(http)}"):
        pass
    async with http.get(f"{sidecar.url}/metrics") as response:
        text = await response.text()
    assert 'comfyui_api_requests_total{code="200",route="/health"}' in text
    assert 'route="other"' in text  # unknown paths share one label value (bounded cardinality)
    assert "no-such-route" not in text
    assert "comfyui_api_queue_depth 0.0" in text
    assert "comfyui_api_ready 1.0" in text
    assert 'comfyui_api_build_info{version="1.18.0"} 1.0' in text
    assert "comfyui_api_model_cache_bytes " in text  # the cache's metrics live in the default registry
    assert "process_resident_memory_bytes " in text


async def test_a_wrong_method_is_405_with_an_allow_header(
    sidecar: RunningSidecar, http: aiohttp.ClientSession
) -> None:
    async with http.delete(f"{sidecar.url}/prompt") as response:
        assert response.status == 405
        assert response.headers["Allow"] == "POST"
