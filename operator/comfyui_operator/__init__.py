"""comfyui_operator: a kopf operator that runs ComfyUI behind the comfyui-api sidecar."""

__version__ = "0.1.0"
