"""Regenerates every generated file of the repository, or checks that they are current.

    python3 hack/generate.py --write   # `make generate`
    python3 hack/generate.py --check   # `make lint`: exit 1 naming each stale file

What it owns: the CRD (crds/ and helm/crds/) and docs/crd-reference.md (comfyui_operator.crdgen, from the
pydantic models), the builders' golden files (tests/unit/operator/golden/, one per example instance) and the
Helm values tables (helm/README.md, docs/helm-values.md, from helm/values.yaml comments).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests" / "unit" / "operator"), str(REPO / "tests" / "chart")]

from comfyui_operator import crdgen  # noqa: E402
from comfyui_operator.fileio import write_atomic  # noqa: E402
from operator_testlib import GOLDEN, golden_files  # noqa: E402
from values_table import generated_files as values_tables  # noqa: E402


def expected() -> dict[Path, str]:
    """Every generated file with the content it must have."""
    return {**crdgen.generated_files(REPO), **golden_files(), **values_tables()}


def stale(files: dict[Path, str]) -> list[Path]:
    """Files whose content differs (missing ones count), and golden files no example produces any more."""
    differing = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    orphans = [path for path in sorted(GOLDEN.glob("*.yaml")) if path not in files]
    return differing + orphans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true")
    mode.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    files = expected()
    if args.check:
        out_of_date = stale(files)
        for path in out_of_date:
            print(f"{path.relative_to(REPO)} is out of date: run `make generate`", file=sys.stderr)
        return 1 if out_of_date else 0
    for path in stale(files):
        if path in files:
            write_atomic(path, files[path])
            print(f"wrote {path.relative_to(REPO)}")
        else:
            path.unlink()
            print(f"removed {path.relative_to(REPO)} (no example produces it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
