"""The node classes the stand-in really executes (with Pillow), and their /object_info entries.

IMAGE values are lists of RGB Pillow images (a batch), MASK values lists of "L" images, models are
`ModelHandle`s. Node functions run in a worker thread; they report progress and honour interrupt through
the `NodeContext` they get.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import random
import re
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

from comfyui_standin.folders import ModelFolders, is_safe_relative, list_input_images
from comfyui_standin.graph import ClassSpec
from comfyui_standin.models import ModelHandle, load_model

Images = list[Image.Image]
RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
MAX_FRAMES = 1000
TAESD_NAMES = ("taesd", "taesdxl", "taesd3", "taef1")


class InterruptProcessing(Exception):
    """Raised inside a node when the prompt is interrupted."""


@dataclass(frozen=True)
class Environment:
    """Directories and model folders the nodes work with."""

    input_dir: Path
    output_dir: Path
    temp_dir: Path
    folders: ModelFolders
    preview_prefix: str = field(
        default_factory=lambda: (
            "ComfyUI_temp_" + "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        )
    )


@dataclass
class NodeContext:
    env: Environment
    prompt: Mapping[str, Any]
    interrupt: threading.Event
    report: Callable[[int, int], None]
    exec_delay: float = 0.0
    preview: Callable[[Image.Image], None] | None = None
    """Set when previews are on (--preview-method): sends a preview image of the running node."""

    def check_interrupt(self) -> None:
        if self.interrupt.is_set():
            raise InterruptProcessing("Processing interrupted")

    def step(self, value: int, total: int) -> None:
        """One unit of work of a progress-reporting node: spend its share of --exec-delay, then report."""
        if self.exec_delay > 0:
            self.sleep(self.exec_delay / max(total, 1))
        self.check_interrupt()
        self.report(value, total)

    def sleep(self, seconds: float) -> None:
        """Sleep, waking early (and raising) on interrupt."""
        deadline = time.monotonic() + seconds
        while True:
            self.check_interrupt()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.interrupt.wait(min(remaining, 0.05))


@dataclass(frozen=True)
class NodeOutput:
    values: tuple[Any, ...]
    ui: dict[str, Any] | None = None


NodeFunction = Callable[[NodeContext, dict[str, Any]], NodeOutput]


@dataclass(frozen=True)
class NodeDef:
    name: str
    function: NodeFunction
    # input name -> function of the environment giving the current combo list
    dynamic_lists: Mapping[str, Callable[[Environment], list[str]]] = field(default_factory=dict)
    # input name -> validator(env, value) -> error text | None (replaces the list check, like VALIDATE_INPUTS)
    validators: Mapping[str, Callable[[Environment, Any], str | None]] = field(default_factory=dict)
    is_changed: Callable[[Environment, Mapping[str, Any]], Any] | None = None
    # nodes that report progress spread --exec-delay over their steps instead of waiting up front
    reports_progress: bool = False
    # model loaders: running one (not serving it from the execution cache) costs --model-load-delay
    loads_model: bool = False


# ---------------------------------------------------------------- image helpers


def _rgb(color: int) -> tuple[int, int, int]:
    return ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)


def _noise(rnd: random.Random, size: tuple[int, int]) -> Image.Image:
    return Image.frombytes("RGB", size, rnd.randbytes(size[0] * size[1] * 3))


def resolve_annotated(env: Environment, name: str, default: str = "input") -> Path | None:
    """Path for `x.png`, `sub/x.png` or `x.png [output]`, confined to its directory; None if unsafe."""
    kind = default
    match = re.fullmatch(r"(.*) \[(input|output|temp)\]", name)
    if match:
        name, kind = match.group(1), match.group(2)
    base = {"input": env.input_dir, "output": env.output_dir, "temp": env.temp_dir}[kind]
    if not is_safe_relative(name):
        return None
    return base / name


def save_images(
    ctx: NodeContext, images: Images, directory: Path, prefix: str, *, kind: str, compress_level: int
) -> dict[str, Any]:
    """Save a batch as `<prefix>_<counter:05>_.png` (subfolders in the prefix) and return the ui entry."""
    normalized = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalized)
    stem = os.path.basename(normalized)
    folder = (directory / subfolder).resolve()
    root = directory.resolve()
    if os.path.commonpath((str(root), str(folder))) != str(root):
        raise ValueError(
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {folder}\n         output_dir: {root}"
        )
    folder.mkdir(parents=True, exist_ok=True)
    counter = next_counter(os.listdir(folder), stem)
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(ctx.prompt))
    results = []
    for image in images:
        filename = f"{stem}_{counter:05}_.png"
        tmp = folder / f".{filename}.tmp"
        image.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)
        tmp.replace(folder / filename)
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


def next_counter(existing: list[str], stem: str) -> int:
    """1 + the highest counter among files named `<stem>_<digits>_...`, or 1."""
    best = 0
    for name in existing:
        if not name.startswith(stem + "_"):
            continue
        rest = name[len(stem) + 1 :]
        digits, sep, _ = rest.partition("_")
        if sep and digits.isdigit():
            best = max(best, int(digits))
    return best + 1


# ---------------------------------------------------------------- node functions


def empty_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    size = (int(i["width"]), int(i["height"]))
    return NodeOutput(([Image.new("RGB", size, _rgb(int(i["color"]))) for _ in range(int(i["batch_size"]))],))


def _open_input(ctx: NodeContext, name: str) -> Image.Image:
    path = resolve_annotated(ctx.env, name)
    if path is None or not path.is_file():
        raise FileNotFoundError(f"Invalid image file: {name}")
    return Image.open(path)


def load_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    images: Images = []
    masks: Images = []
    with _open_input(ctx, str(i["image"])) as source:
        for index, raw_frame in enumerate(ImageSequence.Iterator(source)):
            if index >= MAX_FRAMES:
                break
            frame = ImageOps.exif_transpose(raw_frame)
            if images and frame.size != images[0].size:
                continue
            rgba = frame.convert("RGBA")
            images.append(rgba.convert("RGB"))
            if "A" in frame.getbands():
                masks.append(ImageOps.invert(rgba.getchannel("A")))
            else:
                masks.append(Image.new("L", (64, 64), 0))
    return NodeOutput((images, masks))


def load_image_mask(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    channel = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[str(i["channel"])]
    with _open_input(ctx, str(i["image"])) as source:
        image = ImageOps.exif_transpose(source).convert("RGBA")
    mask = image.getchannel(channel)
    return NodeOutput(([ImageOps.invert(mask) if channel == "A" else mask],))


def image_invert(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    return NodeOutput(([ImageOps.invert(img.convert("RGB")) for img in i["image"]],))


def _scaled_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    w, h = size
    if width == 0 and height == 0:
        return w, h
    if width == 0:
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    return width, height


def _center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    w, h = img.size
    target = width / height
    if w / h > target:
        new_w = round(h * target)
        left = (w - new_w) // 2
        return img.crop((left, 0, left + new_w, h))
    new_h = round(w / target)
    top = (h - new_h) // 2
    return img.crop((0, top, w, top + new_h))


def image_scale(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    method = RESAMPLE[str(i["upscale_method"])]
    out: Images = []
    for img in i["image"]:
        width, height = _scaled_size(img.size, int(i["width"]), int(i["height"]))
        source = _center_crop(img, width, height) if i["crop"] == "center" else img
        out.append(source.resize((width, height), method))
    return NodeOutput((out,))


def image_scale_by(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    method = RESAMPLE[str(i["upscale_method"])]
    factor = float(i["scale_by"])
    return NodeOutput(
        (
            [
                img.resize((max(1, round(img.width * factor)), max(1, round(img.height * factor))), method)
                for img in i["image"]
            ],
        )
    )


def save_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    ui = save_images(
        ctx, i["images"], ctx.env.output_dir, str(i["filename_prefix"]), kind="output", compress_level=4
    )
    return NodeOutput((), ui)


def preview_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    ui = save_images(
        ctx, i["images"], ctx.env.temp_dir, ctx.env.preview_prefix, kind="temp", compress_level=1
    )
    return NodeOutput((), ui)


def _model(ctx: NodeContext, folder: str, name: str) -> ModelHandle:
    path = ctx.env.folders.full_path(folder, name)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder}' with filename '{name}' not found.")
    return load_model(folder, name, path)


def _loader(folder: str, input_name: str, outputs: int = 1) -> NodeFunction:
    def load(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
        handle = _model(ctx, folder, str(i[input_name]))
        return NodeOutput(tuple(handle for _ in range(outputs)))

    return load


def vae_loader(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    name = str(i["vae_name"])
    if name == "pixel_space" or name in TAESD_NAMES:
        return NodeOutput((ModelHandle("vae", name, "", 0),))
    return NodeOutput((_model(ctx, "vae", name),))


def lora_loader(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    lora = _model(ctx, "loras", str(i["lora_name"]))
    model: ModelHandle = i["model"]
    clip: ModelHandle = i["clip"]
    entry = (lora.name, float(i["strength_model"]))
    return NodeOutput(
        (replace(model, loras=(*model.loras, entry)), replace(clip, loras=(*clip.loras, entry)))
    )


def lora_loader_model_only(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    lora = _model(ctx, "loras", str(i["lora_name"]))
    model: ModelHandle = i["model"]
    return NodeOutput((replace(model, loras=(*model.loras, (lora.name, float(i["strength_model"])))),))


def _tiled_steps(width: int, height: int, tile: int = 512, overlap: int = 32) -> int:
    return math.ceil(height / (tile - overlap)) * math.ceil(width / (tile - overlap))


def image_upscale_with_model(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    model: ModelHandle = i["upscale_model"]
    images: Images = i["image"]
    total = sum(_tiled_steps(*img.size) for img in images)
    for step in range(1, total + 1):
        ctx.step(step, total)
    scale = model.scale
    return NodeOutput(
        ([img.resize((img.width * scale, img.height * scale), Image.Resampling.LANCZOS) for img in images],)
    )


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    images: tuple[Image.Image, ...] = ()


def empty_latent_image(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    size = (int(i["width"]), int(i["height"]))
    return NodeOutput(
        (Latent(size[0], size[1], tuple(Image.new("RGB", size) for _ in range(int(i["batch_size"])))),)
    )


def clip_text_encode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    clip: ModelHandle = i["clip"]
    return NodeOutput(({"text": str(i["text"]), "clip": clip.name},))


def ksampler(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    """A toy sampler: one progress step per `steps`, a picture determined by seed, model and prompt."""
    latent: Latent = i["latent_image"]
    model: ModelHandle = i["model"]
    steps = int(i["steps"])
    for step in range(1, steps + 1):
        ctx.step(step, steps)
        if ctx.preview is not None and latent.images:
            ctx.preview(latent.images[0])
    key = json.dumps([int(i["seed"]), model.name, model.loras, i["positive"], i["negative"]], default=str)
    out = []
    for index, base in enumerate(latent.images):
        rnd = random.Random(f"{key}:{index}")
        solid = Image.new("RGB", base.size, tuple(rnd.randrange(256) for _ in range(3)))
        picture = Image.blend(solid, _noise(rnd, base.size), 0.25)
        out.append(Image.blend(base.convert("RGB"), picture, max(0.0, min(1.0, float(i["denoise"])))))
    return NodeOutput((Latent(latent.width, latent.height, tuple(out)),))


def vae_decode(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    latent: Latent = i["samples"]
    return NodeOutput(([img.copy() for img in latent.images],))


def image_add_noise(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    rnd = random.Random(int(i["seed"]))
    strength = float(i["strength"])
    return NodeOutput(([Image.blend(img, _noise(rnd, img.size), strength) for img in i["image"]],))


def standin_sleep(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    steps = int(i["steps"])
    per_step = float(i["seconds"]) / steps
    for step in range(1, steps + 1):
        ctx.sleep(per_step)
        ctx.report(step, steps)
        if ctx.preview is not None and i["image"]:
            ctx.preview(i["image"][0])
    return NodeOutput((i["image"],))


def standin_fail(ctx: NodeContext, i: dict[str, Any]) -> NodeOutput:
    raise RuntimeError(str(i["message"]))


# ---------------------------------------------------------------- lists, validators, "is changed"


def _folder_list(folder: str) -> Callable[[Environment], list[str]]:
    return lambda env: env.folders.list_files(folder)


def _vae_list(env: Environment) -> list[str]:
    names = env.folders.list_files("vae")
    approx = env.folders.list_files("vae_approx")
    for name in TAESD_NAMES:
        has_encoder = any(f.startswith(f"{name}_encoder.") for f in approx)
        has_decoder = any(f.startswith(f"{name}_decoder.") for f in approx)
        if has_encoder and has_decoder:
            names.append(name)
    names.append("pixel_space")
    return names


def _validate_image(env: Environment, value: Any) -> str | None:
    path = resolve_annotated(env, str(value))
    if path is None or not path.is_file():
        return f"Invalid image file: {value}"
    return None


def _image_hash(env: Environment, inputs: Mapping[str, Any]) -> Any:
    path = resolve_annotated(env, str(inputs.get("image", "")))
    if path is None or not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _image_input(name: str = "image") -> dict[str, Any]:
    return {
        "dynamic_lists": {name: lambda env: list_input_images(env.input_dir)},
        "validators": {name: _validate_image},
        "is_changed": _image_hash,
    }


NODES: dict[str, NodeDef] = {
    n.name: n
    for n in (
        NodeDef("EmptyImage", empty_image),
        NodeDef("LoadImage", load_image, **_image_input()),
        NodeDef("LoadImageMask", load_image_mask, **_image_input()),
        NodeDef("ImageInvert", image_invert),
        NodeDef("ImageScale", image_scale),
        NodeDef("ImageScaleBy", image_scale_by),
        NodeDef("SaveImage", save_image),
        NodeDef("PreviewImage", preview_image),
        NodeDef(
            "UpscaleModelLoader",
            _loader("upscale_models", "model_name"),
            dynamic_lists={"model_name": _folder_list("upscale_models")},
            loads_model=True,
        ),
        NodeDef("ImageUpscaleWithModel", image_upscale_with_model, reports_progress=True),
        NodeDef(
            "CheckpointLoaderSimple",
            _loader("checkpoints", "ckpt_name", 3),
            dynamic_lists={"ckpt_name": _folder_list("checkpoints")},
            loads_model=True,
        ),
        NodeDef(
            "LoraLoader", lora_loader, dynamic_lists={"lora_name": _folder_list("loras")}, loads_model=True
        ),
        NodeDef(
            "LoraLoaderModelOnly",
            lora_loader_model_only,
            dynamic_lists={"lora_name": _folder_list("loras")},
            loads_model=True,
        ),
        NodeDef("VAELoader", vae_loader, dynamic_lists={"vae_name": _vae_list}, loads_model=True),
        NodeDef(
            "CLIPLoader",
            _loader("text_encoders", "clip_name"),
            dynamic_lists={"clip_name": _folder_list("text_encoders")},
            loads_model=True,
        ),
        NodeDef(
            "UNETLoader",
            _loader("diffusion_models", "unet_name"),
            dynamic_lists={"unet_name": _folder_list("diffusion_models")},
            loads_model=True,
        ),
        NodeDef(
            "CLIPVisionLoader",
            _loader("clip_vision", "clip_name"),
            dynamic_lists={"clip_name": _folder_list("clip_vision")},
            loads_model=True,
        ),
        NodeDef(
            "ControlNetLoader",
            _loader("controlnet", "control_net_name"),
            dynamic_lists={"control_net_name": _folder_list("controlnet")},
            loads_model=True,
        ),
        NodeDef("EmptyLatentImage", empty_latent_image),
        NodeDef("CLIPTextEncode", clip_text_encode),
        NodeDef("KSampler", ksampler, reports_progress=True),
        NodeDef("VAEDecode", vae_decode),
        NodeDef("ImageAddNoise", image_add_noise),
        NodeDef("StandinSleep", standin_sleep),
        NodeDef("StandinFail", standin_fail),
    )
}


@functools.cache
def _static_object_info() -> dict[str, Any]:
    text = resources.files("comfyui_standin").joinpath("object_info.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def estimated_pixels(env: Environment, inputs: Mapping[str, Any]) -> int:
    """Rough size of a node's work: pixels of its image inputs and of the image it makes, file bytes."""
    total = 0
    for value in inputs.values():
        if isinstance(value, list):
            total += sum(img.width * img.height for img in value if isinstance(img, Image.Image))
        elif isinstance(value, Latent):
            total += sum(img.width * img.height for img in value.images)
    with contextlib.suppress(TypeError, ValueError):
        total += int(inputs.get("width", 0)) * int(inputs.get("height", 0)) * int(inputs.get("batch_size", 1))
    image = inputs.get("image")
    if isinstance(image, str):
        path = resolve_annotated(env, image)
        with contextlib.suppress(OSError):
            total += path.stat().st_size if path is not None else 0
    return total


def is_output_class(class_type: str) -> bool:
    return bool(_static_object_info()[class_type]["output_node"])


def object_info(env: Environment, class_type: str, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The /object_info entry of a class, with combo lists reflecting the files present now (except the
    inputs named in `skip`, which keep the static entry)."""
    info: dict[str, Any] = copy.deepcopy(_static_object_info()[class_type])
    node = NODES[class_type]
    for section in ("required", "optional"):
        for name, entry in info["input"].get(section, {}).items():
            if name not in node.dynamic_lists or name in skip:
                continue
            values = node.dynamic_lists[name](env)
            if entry[0] == "COMBO":
                entry[1]["options"] = values
            else:
                entry[0] = values
    return info


def class_spec(env: Environment, class_type: str) -> ClassSpec:
    """What validation needs. Inputs with a custom validator skip their list (LoadImage need not list
    a large input directory for every prompt)."""
    node = NODES[class_type]
    needed = set(node.dynamic_lists) - set(node.validators)
    if needed:
        info = object_info(env, class_type, skip=frozenset(node.validators))
    else:
        info = _static_object_info()[class_type]
    validators = {name: functools.partial(fn, env) for name, fn in node.validators.items()}
    return ClassSpec(
        name=class_type,
        required=info["input"].get("required", {}),
        optional=info["input"].get("optional", {}),
        output_types=tuple(info["output"]),
        output_node=bool(info["output_node"]),
        custom_validators=validators,
    )


class SpecView(Mapping[str, ClassSpec]):
    """Class specs computed on demand (combo lists read from disk only for classes a prompt uses)."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self._cache: dict[str, ClassSpec] = {}

    def __getitem__(self, key: str) -> ClassSpec:
        if key not in NODES:
            raise KeyError(key)
        if key not in self._cache:
            self._cache[key] = class_spec(self.env, key)
        return self._cache[key]

    def __contains__(self, key: object) -> bool:
        return key in NODES

    def __iter__(self) -> Any:
        return iter(NODES)

    def __len__(self) -> int:
        return len(NODES)
