"""Money and ratios: integers in minor units, exact rounding (half away from zero)."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from .errors import invalid_field

# ISO 4217 active codes.
ISO_4217 = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL BSD BTN BWP
    BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB
    EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR
    MVR MWK MXN MXV MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB
    RWF SAR SBD SCR SDG SEK SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD
    TWD TZS UAH UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XAG XAU XCD XCG XDR XOF XPD XPF
    XPT XSU XUA YER ZAR ZMW ZWG ZWL
    """.split()  # noqa: SIM905
)
_CODE = re.compile(r"^[A-Z]{3}$")


def parse_currency(value: str, default: str, field: str = "currency") -> str:
    if not value:
        return default
    code = value.upper() if len(value) == 3 else value
    if not _CODE.match(code) or code not in ISO_4217:
        raise invalid_field(field, "must be an ISO 4217 currency code such as USD")
    return code


def is_currency(value: str) -> bool:
    return value in ISO_4217


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
