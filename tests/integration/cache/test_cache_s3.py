"""S3 in and out, for real, against moto's server (its own process on 127.0.0.1, IAM auth on): `s3://` media
and model inputs through the cache (one download for 16 concurrent prompts), `s3` output uploads (multipart
for large outputs), credentials per request and from the pod's environment, a wrong key as a clear 403."""

# ruff: noqa: F811  (pytest fixtures imported from s3_server are redefined as arguments)

from __future__ import annotations

import asyncio
import base64
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cache_fileserver import png_bytes, sidecar_with_cache, upscale_prompt
from comfyui_sidecar.app import build_fetcher
from comfyui_sidecar.cache.naming import url_hash
from comfyui_sidecar.cache.settings import CacheSettings
from comfyui_sidecar.egress.outbound import Egress
from comfyui_sidecar.fetching import Credential
from comfyui_sidecar.uploads import S3Upload, Uploader, UploadError, UploadTargets
from comfyui_standin.models import safetensors_bytes
from comfyui_standin.testing import run_standin
from PIL import Image
from prometheus_client import REGISTRY
from s3_server import BUCKET, REGION, ROLE_ARN, S3Server, s3_server  # noqa: F401 (fixture)
from sidecar_harness import RunningSidecar, run_sidecar, sidecar_settings

MIB = 1 << 20


def downloads_so_far() -> float:
    return REGISTRY.get_sample_value("comfyui_api_model_download_duration_seconds_count") or 0.0


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[RunningSidecar]:
    async with sidecar_with_cache(
        tmp_path, s3_multipart_threshold_bytes=5 * MIB, s3_multipart_part_bytes=5 * MIB
    ) as sidecar:
        yield sidecar


async def post(sidecar: RunningSidecar, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(f"{sidecar.url}/prompt", json=body) as resp:
        return resp.status, await resp.json()


async def test_s3_image_and_model_inputs_download_once_for_16_concurrent_prompts(
    stack: RunningSidecar, s3_server: S3Server
) -> None:
    s3 = s3_server.client()
    s3.put_object(Bucket=BUCKET, Key="in/pic.png", Body=png_bytes())  # type: ignore[attr-defined]
    model = safetensors_bytes({"scale": "2"}) + b"\0" * 2 * MIB
    s3.put_object(Bucket=BUCKET, Key="models/x2.safetensors", Body=model)  # type: ignore[attr-defined]
    image_url, model_url = f"s3://{BUCKET}/in/pic.png", f"s3://{BUCKET}/models/x2.safetensors"
    before = downloads_so_far()
    credentials = [s3_server.credential()]
    answers = await asyncio.gather(
        *(
            post(stack, {"prompt": upscale_prompt(image_url, model_url, f"p{i}"), "credentials": credentials})
            for i in range(16)
        )
    )
    assert [status for status, _ in answers] == [200] * 16, answers[0]
    _, body = answers[0]
    assert body["prompt"]["2"]["inputs"]["model_name"] == url_hash(model_url) + ".safetensors"
    out = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert out.size == (8, 8)  # the x2 model from S3 was really used on the image from S3
    assert downloads_so_far() - before == 2  # the image and the model, once each
    assert body["credentials"][0]["auth"]["secret_access_key"] == "[redacted]"


async def test_a_wrong_key_is_a_clear_403(stack: RunningSidecar, s3_server: S3Server) -> None:
    s3_server.client().put_object(Bucket=BUCKET, Key="in/a.png", Body=png_bytes())  # type: ignore[attr-defined]
    prompt = upscale_prompt(f"s3://{BUCKET}/in/a.png", f"s3://{BUCKET}/models/none.safetensors")
    del prompt["2"], prompt["3"]
    prompt["4"]["inputs"]["images"] = ["1", 0]
    status, body = await post(
        stack, {"prompt": prompt, "credentials": [s3_server.credential(secret="wrong")]}
    )
    assert status == 400
    assert body["location"] == "prompt.1.inputs.image"
    assert "(HTTP 403)" in body["error"]
    assert "S3 refused the credentials" in body["error"]
    assert "wrong" not in body["error"]
    bad_key = s3_server.credential()
    bad_key["auth"]["access_key_id"] = "AKIANOTAKEY"  # type: ignore[index]
    status, body = await post(stack, {"prompt": prompt, "credentials": [bad_key]})
    assert status == 400
    assert "InvalidAccessKeyId (HTTP 403)" in body["error"]


async def test_outputs_go_to_s3_large_ones_in_parts(stack: RunningSidecar, s3_server: S3Server) -> None:
    big = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 1800, "height": 1800, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 7, "strength": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "big"}},
    }
    body = {
        "prompt": big,
        "s3": {"bucket": BUCKET, "prefix": "runs/1/"},
        "credentials": [s3_server.credential()],
    }
    status, answer = await post(stack, body)
    assert status == 200, answer
    (url,) = answer["images"]
    assert url.startswith(f"s3://{BUCKET}/runs/1/")
    assert url.endswith(".png")
    assert answer["s3"] == {"bucket": BUCKET, "prefix": "runs/1/", "async": False}
    key = url[len(f"s3://{BUCKET}/") :]
    head = s3_server.client().head_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
    assert head["ContentLength"] > 5 * MIB
    assert (
        head["ETag"].strip('"').endswith(f"-{-(-head['ContentLength'] // (5 * MIB))}")
    )  # a multipart upload
    assert head["ContentType"] == "image/png"
    data = s3_server.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()  # type: ignore[attr-defined]
    assert Image.open(io.BytesIO(data)).size == (1800, 1800)


async def test_pod_credentials_from_the_environment(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": s3_server.access_key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret_key,
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    s3_server.client().put_object(Bucket=BUCKET, Key="in/env.png", Body=png_bytes())  # type: ignore[attr-defined]
    async with run_standin(tmp_path / "comfy") as comfy:
        settings = sidecar_settings(comfy.url, comfy.dirs, cache_dir=tmp_path / "cache")
        async with run_sidecar(settings, fetcher=build_fetcher(settings)) as sidecar:
            prompt = {
                "1": {"class_type": "LoadImage", "inputs": {"image": f"s3://{BUCKET}/in/env.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "env"}},
            }
            status, body = await post(sidecar, {"prompt": prompt, "s3": {"bucket": BUCKET, "prefix": "env-"}})
    assert status == 200, body
    (url,) = body["images"]
    assert url.startswith(f"s3://{BUCKET}/env-")


async def test_a_failing_pod_credential_chain_is_a_clear_error_not_a_500(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IRSA-style settings whose token file is missing: botocore's chain fails; the caller gets a 400 that
    says so (before, an exception the S3 code did not expect escaped as a 500)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ROLE_ARN", ROLE_ARN)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "no-token"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    async with run_standin(tmp_path / "comfy") as comfy:
        settings = sidecar_settings(comfy.url, comfy.dirs, cache_dir=tmp_path / "cache")
        async with run_sidecar(settings, fetcher=build_fetcher(settings)) as sidecar:
            prompt = {
                "1": {"class_type": "LoadImage", "inputs": {"image": f"s3://{BUCKET}/in/irsa.png"}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "irsa"}},
            }
            status, body = await post(sidecar, {"prompt": prompt})
    assert status == 400, body
    assert body["error"].startswith("Failed to download image for node 1: Error downloading file: ")
    assert "s3://comfy/in/irsa.png" in body["error"]


async def test_upload_errors_are_reported_and_the_multipart_upload_aborted(s3_server: S3Server) -> None:
    settings = CacheSettings(
        download_allow_networks=["127.0.0.1/32"],
        s3_multipart_threshold_bytes=5 * MIB,
        s3_multipart_part_bytes=5 * MIB,
    )
    egress = Egress(settings)
    uploader = Uploader(egress, settings)

    class Out:
        filename = "huge.bin"
        data = os.urandom(12 * MIB)
        content_type = "application/octet-stream"

    good = [Credential.model_validate(s3_server.credential("s3://**"))]
    try:
        urls = await uploader.upload(
            [Out()], UploadTargets(s3=S3Upload(bucket=BUCKET, prefix="u/"), credentials=good)
        )
        assert urls == [f"s3://{BUCKET}/u/huge.bin"]
        head = s3_server.client().head_object(Bucket=BUCKET, Key="u/huge.bin")  # type: ignore[attr-defined]
        assert head["ETag"].strip('"').endswith("-3")
        missing = UploadTargets(s3=S3Upload(bucket="no-such-bucket", prefix="u/"), credentials=good)
        with pytest.raises(UploadError, match=r"s3 upload of huge.bin failed: S3 NoSuchBucket \(HTTP 404\)"):
            await uploader.upload([Out()], missing)
        wrong = [Credential.model_validate(s3_server.credential(secret="nope"))]
        with pytest.raises(UploadError, match=r"\(HTTP 403\).*S3 refused the credentials"):
            await uploader.upload(
                [Out()], UploadTargets(s3=S3Upload(bucket=BUCKET, prefix="w/"), credentials=wrong)
            )
        listing = s3_server.client().list_multipart_uploads(Bucket=BUCKET)  # type: ignore[attr-defined]
        assert listing.get("Uploads", []) == []  # nothing half-written is left behind
    finally:
        await uploader.close()
        await egress.close()


async def test_an_s3_endpoint_the_egress_policy_refuses_is_refused(
    stack: RunningSidecar, s3_server: S3Server
) -> None:
    credential = s3_server.credential()
    credential["auth"]["endpoint"] = "http://169.254.169.254"  # type: ignore[index]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"s3://{BUCKET}/in/x.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    status, body = await post(stack, {"prompt": prompt, "credentials": [credential]})
    assert status == 400
    assert "cloud metadata address (never allowed)" in body["error"]
    status, body = await post(
        stack, {"prompt": prompt, "s3": {"bucket": BUCKET, "prefix": "x"}, "credentials": [credential]}
    )
    assert status == 400
    assert body["location"] == "s3"


async def test_a_cached_s3_file_is_given_only_to_callers_whose_key_s3_accepts(
    stack: RunningSidecar, s3_server: S3Server
) -> None:
    s3_server.client().put_object(Bucket=BUCKET, Key="in/private.png", Body=png_bytes())  # type: ignore[attr-defined]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": f"s3://{BUCKET}/in/private.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "p"}},
    }
    status, body = await post(stack, {"prompt": prompt, "credentials": [s3_server.credential()]})
    assert status == 200, body
    before = downloads_so_far()
    status, body = await post(stack, {"prompt": prompt})  # cached, but fetched with credentials
    assert status == 400
    assert "Authentication required to access cached file" in body["error"]
    status, body = await post(stack, {"prompt": prompt, "credentials": [s3_server.credential(secret="bad")]})
    assert status == 400
    assert "Authentication failed: S3" in body["error"]
    assert "(HTTP 403)" in body["error"]
    status, body = await post(stack, {"prompt": prompt, "credentials": [s3_server.credential()]})
    assert status == 200, body
    assert downloads_so_far() == before  # HeadObject asked, the bytes came from the cache
