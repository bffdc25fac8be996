"""Every value is documented; the generated tables in helm/README.md and docs/helm-values.md are current."""

from __future__ import annotations

import yaml

from .values_table import TARGETS, VALUES, documented_keys, table, with_table


def _leaf_keys(node: object, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        keys: set[str] = set()
        for key, value in node.items():
            keys |= _leaf_keys(value, f"{prefix}{key}.")
        return keys
    return {prefix.rstrip(".")}


def test_every_leaf_value_or_its_parent_is_documented() -> None:
    text = VALUES.read_text()
    documented = {key for key, _ in documented_keys(text)}
    undocumented = [
        leaf
        for leaf in _leaf_keys(yaml.safe_load(text))
        if not any(leaf == key or leaf.startswith(key + ".") for key in documented)
    ]
    assert not undocumented, f"add a `# --` comment for: {undocumented}"


def test_generated_tables_are_current() -> None:
    generated = table()
    assert "`watch.scope`" in generated
    for target in TARGETS:
        current = target.read_text()
        assert with_table(current, generated) == current, (
            f"{target.name} is stale: python3 tests/chart/values_table.py --write"
        )
