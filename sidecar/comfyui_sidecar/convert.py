"""convert_output: re-encode image outputs as JPEG or WebP with the request's options (Pillow)."""

from __future__ import annotations

import io

from PIL import Image

from comfyui_sidecar.models import ConvertOutput, JpegOptions, WebpOptions
from comfyui_sidecar.outputs import OutputFile

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}

# Pillow refuses images over ~179 MP (its decompression-bomb guard, a process-wide setting), which a 4x
# upscale passes; the sidecar applies its own limit, CONVERT_MAX_PIXELS, instead. The images are ComfyUI's
# own outputs, not uploads.
Image.MAX_IMAGE_PIXELS = None


class ImageTooLarge(Exception):
    """An output image larger than CONVERT_MAX_PIXELS (the request gets 422)."""


def convert_image(file: OutputFile, convert: ConvertOutput, max_pixels: int) -> OutputFile:
    """Re-encode an image output; raises OSError/ValueError for data Pillow cannot read (e.g. a video),
    ImageTooLarge for an image of more than `max_pixels` (checked from its header, before decoding)."""
    with Image.open(io.BytesIO(file.data)) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"convert_output: {file.filename} is {width}x{height} = {width * height} pixels, more than "
                f"CONVERT_MAX_PIXELS ({max_pixels}); ask without convert_output to get it unconverted"
            )
        image.load()
        buffer = io.BytesIO()
        if convert.format == "webp":
            options = convert.options if isinstance(convert.options, WebpOptions) else WebpOptions()
            _save_webp(image, buffer, options)
            content_type = "image/webp"
        else:
            jpeg = convert.options if isinstance(convert.options, JpegOptions) else JpegOptions()
            _save_jpeg(image, buffer, jpeg)
            content_type = "image/jpeg"
    stem = file.filename.rsplit(".", 1)[0] if "." in file.filename else file.filename
    return OutputFile(f"{stem}.{convert.format}", buffer.getvalue(), content_type)


def _save_jpeg(image: Image.Image, buffer: io.BytesIO, options: JpegOptions) -> None:
    if image.mode not in ("RGB", "L", "CMYK"):
        image = image.convert("RGB")
    image.save(
        buffer,
        "JPEG",
        quality=options.quality,
        progressive=options.progressive or options.optimizeScans,
        optimize=options.optimizeCoding,
        subsampling=_SUBSAMPLING[options.chromaSubsampling],
    )


def _save_webp(image: Image.Image, buffer: io.BytesIO, options: WebpOptions) -> None:
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    image.save(
        buffer,
        "WEBP",
        quality=options.quality,
        alpha_quality=options.alphaQuality,
        lossless=options.lossless or options.nearLossless,
        method=options.effort,
    )
