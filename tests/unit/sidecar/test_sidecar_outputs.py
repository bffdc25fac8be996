"""Output collection order, path safety, conversion, request models, OpenAPI."""

from __future__ import annotations

import io
import json

import pytest
from comfyui_sidecar.convert import ImageTooLarge, convert_image
from comfyui_sidecar.media import sniff_extension
from comfyui_sidecar.models import ConvertOutput, JpegOptions, PromptRequest, WebpOptions
from comfyui_sidecar.outputs import OutputFile, OutputRef, is_safe_relative, output_refs
from comfyui_sidecar.prompt_flow import echo, is_async, js_key_order
from comfyui_sidecar.settings import Settings
from PIL import Image
from pydantic import ValidationError
from transcripts import TRANSCRIPTS


def test_refs_follow_node_order_and_keep_subfolder_and_type() -> None:
    outputs = {
        "9": {"images": [{"filename": "b.png", "subfolder": "s", "type": "output"}]},
        "2": {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}], "animated": [False]},
        "3": {"text": ["hello"], "images": [{"filename": "in.png", "subfolder": "", "type": "input"}]},
    }
    refs = output_refs(outputs, ["2", "9", "3"])
    assert refs == [OutputRef("2", "a.png", "", "temp"), OutputRef("9", "b.png", "s", "output")]


def test_refs_from_a_recorded_history_entry() -> None:
    recorded = json.loads((TRANSCRIPTS / "wf_preview_image.json").read_text())
    entry = next(iter(recorded["history"].values()))
    refs = output_refs(entry["outputs"], ["1", "2"])
    assert [(r.filename, r.type) for r in refs] == [
        ("ComfyUI_temp_zicjt_00001_.png", "temp"),
        ("ComfyUI_temp_zicjt_00002_.png", "temp"),
    ]


def test_js_key_order() -> None:
    assert js_key_order(["10", "b", "2", "01", "a", "0"]) == ["0", "2", "10", "b", "01", "a"]


@pytest.mark.parametrize(
    ("path", "safe"), [("", True), ("a/b", True), ("../a", False), ("/a", False), ("a\\b", False)]
)
def test_safe_relative(path: str, safe: bool) -> None:
    assert is_safe_relative(path) is safe


LIMIT = 16384 * 16384


def _png(mode: str = "RGBA") -> OutputFile:
    buffer = io.BytesIO()
    Image.new(mode, (8, 8), (1, 2, 3, 128) if mode == "RGBA" else (1, 2, 3)).save(buffer, "PNG")
    return OutputFile("x_00001_.png", buffer.getvalue(), "image/png")


def test_convert_to_jpeg_honours_quality_and_progressive() -> None:
    low = convert_image(_png(), ConvertOutput(format="jpg", options=JpegOptions(quality=5)), LIMIT)
    high = convert_image(
        _png(), ConvertOutput(format="jpg", options=JpegOptions(quality=100, progressive=True)), LIMIT
    )
    assert low.filename == "x_00001_.jpg"
    assert low.content_type == "image/jpeg"
    assert len(low.data) < len(high.data)
    with Image.open(io.BytesIO(high.data)) as image:
        assert image.format == "JPEG"
        assert image.info.get("progressive") == 1


def test_convert_to_webp_lossless_keeps_pixels() -> None:
    source = _png("RGB")
    out = convert_image(
        source, ConvertOutput(format="webp", options=WebpOptions(lossless=True, effort=6)), LIMIT
    )
    with Image.open(io.BytesIO(out.data)) as image, Image.open(io.BytesIO(source.data)) as original:
        assert image.format == "WEBP"
        assert image.convert("RGB").tobytes() == original.convert("RGB").tobytes()


def test_convert_refuses_non_images() -> None:
    with pytest.raises(OSError):
        convert_image(
            OutputFile("v.mp4", b"\x00\x00\x00\x18ftypmp42", "video/mp4"), ConvertOutput(format="webp"), LIMIT
        )


def test_images_over_pillows_bomb_limit_meet_the_sidecars_limit_instead() -> None:
    """A 13400x13400 output (179.6 MP, over Pillow's ~179 MP guard) reaches the sidecar's own check."""
    buffer = io.BytesIO()
    Image.new("1", (13400, 13400)).save(buffer, "PNG", compress_level=1)
    big = OutputFile("big_00001_.png", buffer.getvalue(), "image/png")
    assert Image.MAX_IMAGE_PIXELS is None
    with pytest.raises(ImageTooLarge) as caught:
        convert_image(big, ConvertOutput(format="jpg"), 13400 * 13400 - 1)
    assert "13400x13400 = 179560000 pixels, more than CONVERT_MAX_PIXELS (179559999)" in str(caught.value)
    assert Settings.model_fields["convert_max_pixels"].default == 16384 * 16384


def test_an_image_at_the_limit_converts() -> None:
    assert convert_image(_png(), ConvertOutput(format="webp"), 64).filename == "x_00001_.webp"
    with pytest.raises(ImageTooLarge):
        convert_image(_png(), ConvertOutput(format="webp"), 63)


def test_options_are_read_by_format() -> None:
    webp = ConvertOutput.model_validate({"format": "webp", "options": {"lossless": True, "quality": 90}})
    assert isinstance(webp.options, WebpOptions)
    assert webp.options.lossless
    jpeg = ConvertOutput.model_validate({"format": "jpeg", "options": {"lossless": True, "quality": 90}})
    assert isinstance(jpeg.options, JpegOptions)
    assert jpeg.options.quality == 90
    assert ConvertOutput.model_validate({"format": "webp"}).options is None


def test_request_id_with_path_characters_is_refused() -> None:
    with pytest.raises(ValidationError):
        PromptRequest.model_validate({"prompt": {}, "id": "../x"})


def test_echo_is_in_schema_order_and_async_follows_the_contract() -> None:
    request = PromptRequest.model_validate(
        {
            "prompt": {},
            "id": "i",
            "http_upload": {"url_prefix": "http://h/", "async": True},
            "webhook_v2": "http://w",
        }
    )
    body = echo(request, {"2": {"inputs": {}, "class_type": "A"}})
    assert list(body) == ["prompt", "id", "webhook_v2", "http_upload"]
    assert body["http_upload"] == {"url_prefix": "http://h/", "async": True}
    assert is_async(request)
    assert not is_async(PromptRequest.model_validate({"prompt": {}, "http_upload": {"url_prefix": "x"}}))


def test_sniffing_recognises_common_media() -> None:
    assert sniff_extension(b"\x89PNG\r\n\x1a\n....") == "png"
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_extension(b"RIFF\x00\x00\x00\x00WAVEfmt ") == "wav"
    assert sniff_extension(b"\x00\x00\x00\x18ftypisom") == "mp4"
    assert sniff_extension(b"hello") is None
