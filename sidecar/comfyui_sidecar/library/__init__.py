"""The model library's sync (`comfyui-sidecar sync`): a ComfyUIModelLibrary's manifest downloaded onto its
volume with the cache's sources and download code. `manifest` and `report` are pure and shared with the
operator (the manifest it writes, the termination message it reads)."""
