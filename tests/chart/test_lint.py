"""`helm lint` of the chart, strict, with every matrix values file."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import CHART, CI_VALUES, run_helm


def test_matrix_is_not_empty() -> None:
    assert len(CI_VALUES) >= 5, CI_VALUES


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: str, values: Path) -> None:
    result = run_helm(helm, "lint", "--strict", str(CHART), "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout
