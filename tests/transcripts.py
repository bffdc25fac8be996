"""Where the recordings of a real ComfyUI live (tests/data/comfyui-transcripts/README.md says where they came
from): the one place tests read them from."""

from __future__ import annotations

from pathlib import Path

TRANSCRIPTS = Path(__file__).resolve().parent / "data" / "comfyui-transcripts"
