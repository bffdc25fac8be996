"""comfyui_operator."""
