"""Kubernetes resource.Quantity strings to bytes (the subset storage sizes use)."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
_QUANTITY = re.compile(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|)")


def parse_quantity(value: object) -> int:
    """Bytes in a Quantity (int or string); rounds fractions up; raises ValueError on garbage."""
    if type(value) is str and len(value) <= 18 and value.isascii() and value.isdigit():
        return int(value)  # plain bytes, as the driver writes them (every volume the controller reads at start)
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if len(text) <= 18 and text.isascii() and text.isdigit():
        return int(text)  # plain bytes, as the driver writes them: no suffix, no fraction
    m = _QUANTITY.fullmatch(text)
    if not m:
        raise ValueError(f"not a quantity: {value!r}")
    try:
        mantissa = Decimal(m.group(1))
        if mantissa.is_finite() and mantissa and mantissa.adjusted() > 40:
            raise ValueError(f"quantity too large: {str(value)[:40]!r}")  # 1e999999999 must not become an int
        number = mantissa * _SUFFIX[m.group(2)]
    except InvalidOperation as e:
        raise ValueError(f"not a quantity: {value!r}") from e
    if not number.is_finite():
        raise ValueError(f"not a quantity: {value!r}")
    whole = int(number)
    return whole if number == whole else whole + 1
