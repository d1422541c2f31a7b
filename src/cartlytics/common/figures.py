"""Figures leave the service exact, or not at all.

Amounts and counts travel as JSON numbers (doubles on the wire, int32 for some counts). A double
holds every whole number only up to 2^53 - 1; beyond, ``9999999999999991`` would reach a client as
``9999999999999992``. Such a figure is refused with OUT_OF_RANGE (HTTP 400) naming it, never
rounded; so is a count beyond its int32 field. Sums themselves are exact (Decimal128 in ClickHouse,
Python ints here), so the check sees the true value.
"""

from __future__ import annotations

import grpc

from .errors import ApiError, FieldViolation

MAX_EXACT = 2**53 - 1
MAX_INT32 = 2**31 - 1
REASON = "FIGURE_TOO_LARGE"


def _too_large(name: str, value: int, limit: int, why: str) -> ApiError:
    return ApiError(
        message=(
            f"{name} is {value}, beyond {limit}, {why}; ask for a shorter period or another "
            "currency"
        ),
        reason=REASON,
        code=grpc.StatusCode.OUT_OF_RANGE,
        violations=[FieldViolation(name, f"must be at most {limit} to be answered exactly")],
    )


def exact(name: str, value: int) -> int:
    """``value`` for a double field, if the double holds it exactly."""
    if -MAX_EXACT <= value <= MAX_EXACT:
        return value
    raise _too_large(name, value, MAX_EXACT, "the largest whole number a JSON number holds exactly")


def int32(name: str, value: int) -> int:
    """``value`` for an int32 field, if it fits."""
    if -MAX_INT32 - 1 <= value <= MAX_INT32:
        return value
    raise _too_large(name, value, MAX_INT32, "the largest count this field carries")
