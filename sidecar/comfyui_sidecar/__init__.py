"""comfyui_sidecar."""
