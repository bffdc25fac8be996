"""Stand-in pieces without a server: command line, model folders, model files, image nodes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from comfyui_standin.config import parse_args
from comfyui_standin.folders import (
    ExtraPathsError,
    ModelFolders,
    confined,
    is_safe_relative,
    parse_extra_config,
)
from comfyui_standin.models import SafetensorError, load_model, read_safetensors_metadata
from comfyui_standin.nodes import (
    NODES,
    Environment,
    InterruptProcessing,
    NodeContext,
    estimated_pixels,
    next_counter,
    object_info,
    resolve_annotated,
)
from comfyui_standin.testing import write_corrupt_model, write_model, write_png
from PIL import Image

# ---------------------------------------------------------------- command line


def test_parse_args_like_comfyui(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    config = parse_args(
        [
            "--listen",
            "--port",
            "9000",
            "--base-directory",
            str(tmp_path),
            "--cpu",
            "--lowvram",
            "--disable-auto-launch",
            "--preview-method",
            "auto",
            "--extra-model-paths-config",
            str(extra),
            "--extra-model-paths-config",
            str(extra),
            "--temp-directory",
            str(tmp_path / "t"),
            "--exec-delay",
            "0.5",
            "--model-load-delay",
            "2.5",
            "--cache-lru",
            "16",
        ]
    )
    assert config.listen == "0.0.0.0"
    assert config.port == 9000
    assert config.input_dir == tmp_path / "input"
    assert config.models_dir == tmp_path / "models"
    assert config.temp_dir == tmp_path / "t" / "temp"
    assert config.extra_model_paths_configs == (extra, extra)
    assert config.exec_delay == 0.5
    assert (config.model_load_delay, config.cache_lru) == (2.5, 16)


def test_parse_args_defaults_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = parse_args(["--base-directory", str(tmp_path), "--use-sage-attention", "--reserve-vram", "2"])
    assert (config.listen, config.port) == ("127.0.0.1", 8188)
    assert config.ignored_args == ("--use-sage-attention",)
    with pytest.raises(SystemExit):
        parse_args(["--port", "70000"])
    assert "--port must be between" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--exec-delay", "-1"])
    with pytest.raises(SystemExit):
        parse_args(["--model-load-delay", "-1"])
    with pytest.raises(SystemExit):
        parse_args(["--cache-lru", "-2"])
    assert "--cache-lru must not be negative" in capsys.readouterr().err


# ---------------------------------------------------------------- folders


def test_parse_extra_config_paths(tmp_path: Path) -> None:
    doc = yaml.safe_load(
        "a:\n  base_path: /srv/a\n  is_default: true\n  checkpoints: models/checkpoints\n"
        "  loras: |\n    models/loras\n    other/loras\n"
        "b:\n  base_path: rel\n  unet: u\n"
        "c:\n  vae: /abs/vae\n  clip: relclip\n"
        "empty:\n"
    )
    entries = parse_extra_config(doc, tmp_path)
    assert entries == [
        (Path("/srv/a/models/checkpoints"), "checkpoints", True),
        (Path("/srv/a/models/loras"), "loras", True),
        (Path("/srv/a/other/loras"), "loras", True),
        (tmp_path / "rel" / "u", "unet", False),
        (Path("/abs/vae"), "vae", False),
        (tmp_path / "relclip", "clip", False),
    ]


def test_parse_extra_config_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ExtraPathsError, match="mapping"):
        parse_extra_config(["x"], tmp_path)
    with pytest.raises(ExtraPathsError, match="section 'a'"):
        parse_extra_config({"a": "text"}, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(ExtraPathsError, match="not valid YAML"):
        ModelFolders().load_extra_config(bad)
    with pytest.raises(ExtraPathsError, match="cannot read"):
        ModelFolders().load_extra_config(tmp_path / "missing.yaml")


def test_folders_search_base_and_extra_roots_with_symlinks(tmp_path: Path) -> None:
    base = tmp_path / "base"
    write_model(base / "models" / "checkpoints" / "base.safetensors")
    write_model(base / "models" / "unet" / "legacy.safetensors")
    shared = tmp_path / "shared"
    write_model(shared / "ckpts" / "sub" / "deep.safetensors")
    (shared / "ckpts" / "notes.txt").write_text("not a model")
    real = write_model(tmp_path / "store" / "blob.safetensors")
    (shared / "ckpts" / "linked.safetensors").symlink_to(real)
    (shared / "ckpts" / "linkdir").symlink_to(real.parent, target_is_directory=True)
    config = tmp_path / "extra.yaml"
    config.write_text(f"s:\n  base_path: {shared}\n  is_default: true\n  checkpoints: ckpts\n  unet: ckpts\n")
    folders = ModelFolders.standard(base, base / "models", base / "output")
    folders.load_extra_config(config)
    assert folders.folders["checkpoints"].paths[0] == shared / "ckpts"
    assert folders.list_files("checkpoints") == [
        "base.safetensors",
        "linkdir/blob.safetensors",
        "linked.safetensors",
        "sub/deep.safetensors",
    ]
    assert "legacy.safetensors" in folders.list_files("diffusion_models")
    assert folders.full_path("checkpoints", "linked.safetensors") == shared / "ckpts" / "linked.safetensors"
    assert folders.full_path("unet", "legacy.safetensors") is not None
    assert folders.full_path("checkpoints", "../base/models/checkpoints/base.safetensors") is None
    assert folders.full_path("checkpoints", "nope.safetensors") is None
    assert folders.full_path("no_such_folder", "base.safetensors") is None


def test_safe_relative_and_confined(tmp_path: Path) -> None:
    assert is_safe_relative("a/b.png")
    assert not is_safe_relative("../x")
    assert not is_safe_relative("/etc/passwd")
    assert not is_safe_relative("a/../../x")
    assert not is_safe_relative("")
    assert confined(tmp_path, "sub") == tmp_path.resolve() / "sub"
    assert confined(tmp_path, "../x") is None
    (tmp_path / "escape").symlink_to("/")
    assert confined(tmp_path, "escape") is None


# ---------------------------------------------------------------- model files


def test_safetensors_header_checks(tmp_path: Path) -> None:
    good = write_model(tmp_path / "good.safetensors", {"scale": "4"})
    assert read_safetensors_metadata(good) == {"scale": "4"}
    assert load_model("upscale_models", "good.safetensors", good).scale == 4
    with pytest.raises(SafetensorError, match="header too large"):
        read_safetensors_metadata(write_corrupt_model(tmp_path / "bad.safetensors"))
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(SafetensorError, match="header too small"):
        read_safetensors_metadata(short)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes((50).to_bytes(8, "little") + b"{}")
    with pytest.raises(SafetensorError, match="invalid header length"):
        read_safetensors_metadata(lying)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes((4).to_bytes(8, "little") + b"{{{{")
    with pytest.raises(SafetensorError, match="deserialization"):
        read_safetensors_metadata(garbage)


def test_model_scale_from_name(tmp_path: Path) -> None:
    path = write_model(tmp_path / "tiny-compact-x3.safetensors")
    assert load_model("upscale_models", path.name, path).scale == 3
    plain = tmp_path / "plain.pth"
    plain.write_bytes(b"\x80\x04not unpickled")
    handle = load_model("upscale_models", plain.name, plain)
    assert handle.scale == 2
    assert handle.size == plain.stat().st_size


# ---------------------------------------------------------------- nodes


def make_env(tmp_path: Path) -> Environment:
    for d in ("input", "output", "temp", "models"):
        (tmp_path / d).mkdir(exist_ok=True)
    folders = ModelFolders.standard(tmp_path, tmp_path / "models", tmp_path / "output")
    return Environment(tmp_path / "input", tmp_path / "output", tmp_path / "temp", folders)


def make_ctx(
    env: Environment, reports: list[tuple[int, int]] | None = None, delay: float = 0.0
) -> NodeContext:
    sink = reports if reports is not None else []
    return NodeContext(env, {}, threading.Event(), lambda v, m: sink.append((v, m)), delay)


def run(ctx: NodeContext, class_type: str, **inputs: Any) -> Any:
    return NODES[class_type].function(ctx, inputs)


def test_next_counter() -> None:
    names = ["img_00001_.png", "img_00007_.png", "img_x_.png", "other_00099_.png", "img_00003.png", "img_"]
    assert next_counter(names, "img") == 8
    assert next_counter([], "img") == 1


def test_save_image_counters_subfolders_and_confinement(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = make_ctx(env)
    images = run(ctx, "EmptyImage", width=8, height=4, batch_size=2, color=0xFF0000).values[0]
    ui = run(ctx, "SaveImage", images=images, filename_prefix="rig/empty").ui
    assert ui == {
        "images": [
            {"filename": "empty_00001_.png", "subfolder": "rig", "type": "output"},
            {"filename": "empty_00002_.png", "subfolder": "rig", "type": "output"},
        ]
    }
    with Image.open(env.output_dir / "rig" / "empty_00002_.png") as img:
        assert img.size == (8, 4)
        assert img.getpixel((0, 0)) == (255, 0, 0)
    again = run(ctx, "SaveImage", images=images[:1], filename_prefix="rig/empty").ui
    assert again["images"][0]["filename"] == "empty_00003_.png"
    with pytest.raises(ValueError, match="outside the output folder"):
        run(ctx, "SaveImage", images=images, filename_prefix="../escape")


def test_preview_goes_to_temp(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = make_ctx(env)
    images = run(ctx, "EmptyImage", width=4, height=4, batch_size=1, color=255).values[0]
    entry = run(ctx, "PreviewImage", images=images).ui["images"][0]
    assert entry["type"] == "temp"
    assert entry["filename"].startswith("ComfyUI_temp_")
    assert (env.temp_dir / entry["filename"]).is_file()


def test_load_invert_scale(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ctx = make_ctx(env)
    write_png(env.input_dir / "sub" / "in.png", (20, 10), (10, 20, 30))
    images, masks = run(ctx, "LoadImage", image="sub/in.png").values
    assert images[0].size == (20, 10)
    assert masks[0].size == (64, 64)
    inverted = run(ctx, "ImageInvert", image=images).values[0]
    assert inverted[0].getpixel((0, 0)) == (245, 235, 225)
    scaled = run(
        ctx, "ImageScale", image=images, upscale_method="bilinear", width=40, height=0, crop="disabled"
    )
    assert scaled.values[0][0].size == (40, 20)
    cropped = run(ctx, "ImageScale", image=images, upscale_method="area", width=8, height=8, crop="center")
    assert cropped.values[0][0].size == (8, 8)
    by = run(ctx, "ImageScaleBy", image=images, upscale_method="lanczos", scale_by=0.5)
    assert by.values[0][0].size == (10, 5)
    write_png(env.output_dir / "out.png", (3, 3))
    assert resolve_annotated(env, "out.png [output]") == env.output_dir / "out.png"
    assert resolve_annotated(env, "../x.png") is None
    with pytest.raises(FileNotFoundError, match="Invalid image file"):
        run(ctx, "LoadImage", image="missing.png")


def test_upscale_reports_tiles_and_honours_interrupt(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    reports: list[tuple[int, int]] = []
    ctx = make_ctx(env, reports)
    model_path = write_model(env.folders.folders["upscale_models"].paths[0] / "m-x2.safetensors")
    model = run(ctx, "UpscaleModelLoader", model_name=model_path.name).values[0]
    images = run(ctx, "EmptyImage", width=1000, height=500, batch_size=1, color=0).values[0]
    out = run(ctx, "ImageUpscaleWithModel", upscale_model=model, image=images).values[0]
    assert out[0].size == (2000, 1000)
    assert reports == [(i, 6) for i in range(1, 7)]  # ceil(500/480) * ceil(1000/480) tiles
    ctx.interrupt.set()
    with pytest.raises(InterruptProcessing):
        run(ctx, "ImageUpscaleWithModel", upscale_model=model, image=images)
    with pytest.raises(
        FileNotFoundError, match=r"Model in folder 'upscale_models' with filename 'x' not found\."
    ):
        run(ctx, "UpscaleModelLoader", model_name="x")


def test_sleep_node_is_interruptible_and_fail_node_fails(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    reports: list[tuple[int, int]] = []
    ctx = make_ctx(env, reports)
    out = run(ctx, "StandinSleep", image=["img"], seconds=0.02, steps=4)
    assert out.values == (["img"],)
    assert reports == [(1, 4), (2, 4), (3, 4), (4, 4)]
    threading.Timer(0.05, ctx.interrupt.set).start()
    with pytest.raises(InterruptProcessing):
        run(ctx, "StandinSleep", image=["img"], seconds=30.0, steps=2)
    with pytest.raises(RuntimeError, match="boom"):
        run(make_ctx(env), "StandinFail", message="boom")


def test_txt2img_chain_is_deterministic(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    ckpt = write_model(env.folders.folders["checkpoints"].paths[0] / "c.safetensors")
    reports: list[tuple[int, int]] = []
    ctx = make_ctx(env, reports)
    model, clip, vae = run(ctx, "CheckpointLoaderSimple", ckpt_name=ckpt.name).values
    pos = run(ctx, "CLIPTextEncode", text="a cat", clip=clip).values[0]
    latent = run(ctx, "EmptyLatentImage", width=32, height=16, batch_size=1).values[0]

    def sample(seed: int) -> Any:
        return run(
            ctx,
            "KSampler",
            model=model,
            seed=seed,
            steps=3,
            cfg=7.0,
            sampler_name="euler",
            scheduler="normal",
            positive=pos,
            negative=pos,
            latent_image=latent,
            denoise=1.0,
        ).values[0]

    first = run(ctx, "VAEDecode", samples=sample(1), vae=vae).values[0][0]
    assert first.size == (32, 16)
    assert first.tobytes() == run(ctx, "VAEDecode", samples=sample(1), vae=vae).values[0][0].tobytes()
    assert first.tobytes() != run(ctx, "VAEDecode", samples=sample(2), vae=vae).values[0][0].tobytes()
    assert reports[:3] == [(1, 3), (2, 3), (3, 3)]


def test_object_info_lists_reflect_files(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    assert object_info(env, "UpscaleModelLoader")["input"]["required"]["model_name"][1]["options"] == []
    write_model(env.folders.folders["upscale_models"].paths[0] / "a.safetensors")
    write_model(env.folders.folders["checkpoints"].paths[0] / "c.ckpt")
    write_png(env.input_dir / "pic.png")
    assert object_info(env, "UpscaleModelLoader")["input"]["required"]["model_name"][1]["options"] == [
        "a.safetensors"
    ]
    assert object_info(env, "CheckpointLoaderSimple")["input"]["required"]["ckpt_name"][0] == ["c.ckpt"]
    assert object_info(env, "LoadImage")["input"]["required"]["image"][0] == ["pic.png"]
    assert object_info(env, "VAELoader")["input"]["required"]["vae_name"][0] == ["pixel_space"]
    for name in NODES:
        info = object_info(env, name)
        assert info["name"] == name
        assert set(info["input_order"]) <= set(info["input"])


def test_estimated_pixels(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    write_png(env.input_dir / "f.png", (8, 8))
    size = (env.input_dir / "f.png").stat().st_size
    assert estimated_pixels(env, {"width": 10, "height": 20, "batch_size": 3, "color": 0}) == 600
    assert estimated_pixels(env, {"image": [Image.new("RGB", (4, 5))] * 2}) == 40
    assert estimated_pixels(env, {"image": "f.png"}) == size
    assert estimated_pixels(env, {"image": "missing.png", "width": "x", "height": 1}) == 0
