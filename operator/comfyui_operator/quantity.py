"""Kubernetes resource quantities: the pattern the API server accepts and a parser to bytes.

Pure functions; used by the API models (validation) and the builders (cache budget from `sizeLimit`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The same grammar as kubebuilder's `resource.Quantity` schema pattern: a signed decimal number followed by a
# binary suffix (Ki..Ei), a decimal suffix (n, u, m, k, M, G, T, P, E) or a decimal exponent.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_NUMBER_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def is_quantity(value: int | str) -> bool:
    """True when `value` is a valid Kubernetes quantity (an int, or a string matching the pattern)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return bool(_QUANTITY_RE.match(value))


def parse_quantity(value: int | str) -> Decimal:
    """Return the quantity's value in base units (bytes for memory). Raises ValueError on a bad quantity."""
    if not is_quantity(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 100Gi, 512Mi, 1.5G, 2)")
    if isinstance(value, int):
        return Decimal(value)
    match = _NUMBER_RE.match(value)
    if match is None:  # pragma: no cover - excluded by is_quantity
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    number, suffix = match.group(1), match.group(2)
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - excluded by the pattern
        raise ValueError(f"{value!r} is not a Kubernetes quantity") from exc
    if suffix in _BINARY:
        return base * _BINARY[suffix]
    if suffix in _DECIMAL:
        return base * _DECIMAL[suffix]
    return Decimal(value)  # decimal exponent form such as 1e9
