"""How a test tier reacts when a tool it needs is missing: skip with the reason on a developer's machine, fail
under CI=true, where .ci/run installs every tool and a skipped tier would hide that it did not run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def tool_missing(reason: str) -> NoReturn:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: this tier must not be skipped)", pytrace=False)
    pytest.skip(reason)
