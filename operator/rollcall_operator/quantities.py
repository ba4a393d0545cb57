"""Kubernetes resource quantities (``500m``, ``4Gi``, ``1e3``) as exact numbers, and per-job bounds.

The CRD's pattern only checks the shape of ``resources.cpu``/``memory``; ``999k`` CPUs or ``900Ti``
of memory fit it. The operator compares each against its settings before it makes a Job, with the
apimachinery grammar: a signed decimal number, then one binary-SI suffix (Ki..Ei), one decimal-SI
suffix (n, u, m, "", k, M, G, T, P, E) or a decimal exponent (e/E and an integer).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rollcall_contract.model import Resources

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 10**3),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}
_QUANTITY = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?$"
)


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity string; ValueError when it is not one."""
    m = _QUANTITY.match(text.strip()) if len(text) <= 64 else None
    if m is None:
        raise ValueError(f"not a Kubernetes quantity: {text[:64]!r}")
    number = Fraction(m["num"])
    if m["exp"] is not None:
        exp = int(m["exp"])
        if abs(exp) > 30:
            raise ValueError(f"quantity exponent out of range: {text!r}")
        return number * Fraction(10) ** exp
    suffix = m["suffix"] or ""
    return number * (_BINARY[suffix] if suffix in _BINARY else _DECIMAL[suffix])


@dataclass(frozen=True)
class JobBounds:
    """The most one RJ may ask for (operator settings); 0 or empty: unbounded."""

    max_gpus: int = 0
    max_cpu: str = ""
    max_memory: str = ""


def over_bounds(resources: Resources, bounds: JobBounds) -> str | None:
    """Why the RJ's ``spec.resources`` (as the model parsed them, defaults included) exceed
    ``bounds`` (a status message), or None."""
    gpus = resources.gpus
    problems = []
    if bounds.max_gpus and gpus > bounds.max_gpus:
        problems.append(f"resources.gpus={gpus} exceeds the limit of {bounds.max_gpus}")
    for field, value, limit in (
        ("cpu", resources.cpu, bounds.max_cpu),
        ("memory", resources.memory, bounds.max_memory),
    ):
        try:
            amount = parse_quantity(value)
        except ValueError:
            problems.append(f"resources.{field}={value!r} is not a quantity")
            continue
        if amount <= 0:
            problems.append(f"resources.{field}={value} must be positive")
        elif limit and amount > parse_quantity(limit):
            problems.append(f"resources.{field}={value} exceeds the limit of {limit}")
    return "; ".join(problems) or None
