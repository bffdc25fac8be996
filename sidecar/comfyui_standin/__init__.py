"""comfyui_standin."""
