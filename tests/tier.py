"""How a test tier reacts when a tool it needs is missing: skip with the reason on a developer's machine, fail
under CI=true, where .ci/run installs every tool and a skipped tier would hide that it did not run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def tool_missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this tier must not be skipped)", pytrace=False)
    pytest.skip(reason)


def tool_path(variable: str, name: str, how_to_build: str) -> str:
    """The tool named by $variable (or `name` on PATH); tool_missing(...) when there is none."""
    configured = os.environ.get(variable)
    found = configured if configured and Path(configured).is_file() else shutil.which(name)
    if found is None:
        tool_missing(f"{name} not found: set {variable} ({how_to_build})")
    return found
