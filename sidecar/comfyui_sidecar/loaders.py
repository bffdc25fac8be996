"""Model-loader nodes: which input of which node names a file in which ComfyUI model folder.

Folder names are ComfyUI's own (comfyui-server-api.md section 5), not upstream comfyui-api's (which put UNET
files in `diffusers` and CLIP vision files in `text_encoders`). Custom-node loaders are added with the
EXTRA_MODEL_LOADERS setting; an entry there replaces the built-in entry of the same class.
"""

from __future__ import annotations

from collections.abc import Mapping

LoaderTable = Mapping[str, Mapping[str, str]]

BUILTIN_LOADERS: LoaderTable = {
    "CheckpointLoaderSimple": {"ckpt_name": "checkpoints"},
    "CheckpointLoader": {"ckpt_name": "checkpoints", "config_name": "configs"},
    "unCLIPCheckpointLoader": {"ckpt_name": "checkpoints"},
    "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLora": {"ckpt_name": "checkpoints"},
    "CreateHookModelAsLoraModelOnly": {"ckpt_name": "checkpoints"},
    "LoraLoader": {"lora_name": "loras"},
    "LoraLoaderModelOnly": {"lora_name": "loras"},
    "CreateHookLora": {"lora_name": "loras"},
    "CreateHookLoraModelOnly": {"lora_name": "loras"},
    "VAELoader": {"vae_name": "vae"},
    "CLIPLoader": {"clip_name": "text_encoders"},
    "DualCLIPLoader": {"clip_name1": "text_encoders", "clip_name2": "text_encoders"},
    "TripleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3)},
    "QuadrupleCLIPLoader": {f"clip_name{i}": "text_encoders" for i in (1, 2, 3, 4)},
    "UNETLoader": {"unet_name": "diffusion_models"},
    "CLIPVisionLoader": {"clip_name": "clip_vision"},
    "ControlNetLoader": {"control_net_name": "controlnet"},
    "DiffControlNetLoader": {"control_net_name": "controlnet"},
    "UpscaleModelLoader": {"model_name": "upscale_models"},
    "StyleModelLoader": {"style_model_name": "style_models"},
    "GLIGENLoader": {"gligen_name": "gligen"},
    "HypernetworkLoader": {"hypernetwork_name": "hypernetworks"},
    "PhotoMakerLoader": {"photomaker_model_name": "photomaker"},
    "ModelPatchLoader": {"name": "model_patches"},
    "AudioEncoderLoader": {"audio_encoder_name": "audio_encoders"},
    "DiffusersLoader": {"model_path": "diffusers"},
}


def loader_table(extra: LoaderTable | None = None) -> dict[str, dict[str, str]]:
    """The built-in table with `extra` entries added (an extra class replaces a built-in one)."""
    table = {name: dict(inputs) for name, inputs in BUILTIN_LOADERS.items()}
    for name, inputs in (extra or {}).items():
        table[name] = dict(inputs)
    return table
