"""Structural comparison: does the object read back from the API server hold everything a builder promised?"""

from __future__ import annotations

from typing import Any


def missing_from(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Differences where `actual` lacks or changes something in `expected` (extra fields in `actual`, such as
    server defaults, are fine; a zero value the server omits, such as `readOnly: false`, counts as present).
    Lists must match in length and order; returns readable `path: ...` lines."""
    where = path or "<root>"
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        problems: list[str] = []
        for key, value in expected.items():
            child = f"{path}.{key}" if path else str(key)
            if key not in actual:
                if value in (False, 0, "", None) or value == [] or value == {}:
                    continue
                problems.append(f"{child}: missing (expected {value!r})")
            else:
                problems += missing_from(value, actual[key], child)
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{where}: expected {len(expected)} items {expected!r}, got {actual!r}"]
        problems = []
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            problems += missing_from(want, got, f"{path}[{index}]")
        return problems
    if expected != actual and str(expected) != str(actual):
        return [f"{where}: expected {expected!r}, got {actual!r}"]
    return []
