"""Money and ratios: integers in minor units, exact rounding (half away from zero)."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

import iso4217
from iso4217 import Currency

from .errors import invalid_field

# ISO 4217 from the `iso4217` package, which carries ISO's own published table (its version says
# the table's date): every active code, funds (BOV, CHE, ...), metals (XAU, ...), XTS and XXX.
ISO_4217: frozenset[str] = frozenset(currency.code for currency in Currency)
ISO_4217_PUBLISHED = iso4217.__published__
# Minor-unit exponent per code: how many decimals one minor unit is (USD 2, JPY 0, BHD 3, CLF 4).
# ISO gives none ("N.A.") for metals, XDR, XTS, XXX, ...; amounts in those are whole units (0).
# Codes an earlier release accepted that ISO has since withdrawn (BGN: Bulgaria joined the euro on
# 2026-01-01; ANG became XCG): new events may not use them, but figures and exports of events
# stored back then must stay reachable, so reads accept them. Frozen: only ever add to it, when the
# package drops a code we accepted (a test checks it).
WITHDRAWN: dict[str, int] = {"ANG": 2, "BGN": 2, "CUC": 2, "SLL": 2, "ZWL": 2}
READABLE: frozenset[str] = ISO_4217 | WITHDRAWN.keys()
MINOR_UNITS: dict[str, int] = {
    **WITHDRAWN,
    **{currency.code: currency.exponent or 0 for currency in Currency},
}
_CODE = re.compile(r"^[A-Z]{3}$")


def parse_currency(value: str, default: str, field: str = "currency") -> str:
    if not value:
        return default
    code = value.upper() if len(value) == 3 else value
    if not _CODE.match(code) or code not in READABLE:
        raise invalid_field(field, "must be an ISO 4217 currency code such as USD")
    return code


def is_currency(value: str) -> bool:
    """An active ISO 4217 code: what new events may carry."""
    return value in ISO_4217


def minor_units(code: str) -> int:
    """Decimals of the currency's minor unit (2 for USD: 6578 is 65.78); 0 for unit-less codes."""
    return MINOR_UNITS[code]


def round_half_up(value: Fraction, places: int = 0) -> Decimal:
    exact = Decimal(value.numerator) / Decimal(value.denominator)
    return exact.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def average(total: int, count: int) -> int:
    """total / count rounded half up to an integer; 0 when count is 0."""
    return int(round_half_up(Fraction(total, count))) if count else 0


def percent(part: int, whole: int) -> float:
    """part / whole * 100 to one decimal; 0 when whole is 0."""
    return float(round_half_up(Fraction(part * 100, whole), 1)) if whole else 0.0


def growth(current: int, previous: int) -> float | None:
    """(current - previous) / previous * 100, one decimal; 0 when both are 0; None if undefined."""
    if previous == 0:
        return 0.0 if current == 0 else None
    return float(round_half_up(Fraction((current - previous) * 100, previous), 1))
