"""Compliance profiles: the rules money moves by, from named, versioned data files.

A deployment runs under one profile (``cardmint serve --profile NAME|FILE``; default
``platform``). Two ship in ``rules/``: ``platform`` (the articles' rules) and
``cn-prepaid`` (China's single-purpose prepaid-card rules, with citations in the file).
Every ledger movement records the profile that judged it (``name@version``).

Amounts in a profile are in major units of the movement's currency, as decimal strings
("50000", "0.5"), converted exactly with the currency's ISO 4217 exponent; "" means no
limit. A file is checked whole when loaded: an unknown key, a missing key or a figure that
does not convert is an error naming it, never a silently ignored rule.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .currencies import ISO_4217, minor_exponent

__all__ = ["BUILTIN", "CardRules", "Profile", "ProfileError", "RiskRules", "RiskTier", "load_profile"]

_DIR = Path(__file__).with_name("rules")
BUILTIN = ("platform", "cn-prepaid")


class ProfileError(ValueError):
    """A profile file that cannot be used as it is."""


@functools.lru_cache(maxsize=1024)
def _minor(major: Decimal, currency: str) -> int:
    """``major`` in ``currency``'s minor units (asked on every movement a limit judges)."""
    scaled = major.scaleb(minor_exponent(currency))
    if scaled != scaled.to_integral_value():
        raise ProfileError(f"{major} has more decimals than {currency} allows")
    return int(scaled)


@dataclass(frozen=True)
class Amount:
    """A limit in major units ("" = none), asked for in any currency's minor units."""

    major: Decimal | None

    def minor(self, currency: str) -> int | None:
        if self.major is None:
            return None
        return _minor(self.major, currency)


@dataclass(frozen=True)
class CardRules:
    """Rules for one kind of card: anonymous (bearer) or registered (holder on record)."""

    face_value_max: Amount
    validity_days_min: int  # 0 = no minimum
    expiry_required: bool
    expiry_allowed: bool
    loss_reporting: bool


@dataclass(frozen=True)
class RiskTier:
    """Failed binds (wrong, mistyped or malformed codes) against one subject (a card, an
    account, a client address or a device id), counted in a window of ``lock_seconds``.

    Below ``challenge_after`` a failure is answered as what it is (with a suggestion for a
    near miss: the hint tier). From ``challenge_after`` failures on, a bind is not even
    evaluated unless the request says the person passed a challenge (FAILED_PRECONDITION,
    reason CHALLENGE_REQUIRED); 0 = no challenge tier. At ``lock_after`` failures the
    subject is locked (RESOURCE_EXHAUSTED with RetryInfo). Failures are counted in windows
    aligned to the clock and judged as the current window's plus the previous one's
    (storage ``Attempts``): no span of ``lock_seconds`` ever holds more than ``lock_after``
    evaluated failures, and a lock lasts until the sum is under the limit again (to the
    current window's end, or the next one's when the current window alone reached it).
    """

    challenge_after: int
    lock_after: int
    lock_seconds: int

    def challenged(self, failures: int) -> bool:
        return 0 < self.challenge_after <= failures


@dataclass(frozen=True)
class RiskRules:
    card: RiskTier
    account: RiskTier
    address: RiskTier
    device: RiskTier


@dataclass(frozen=True)
class Profile:
    name: str
    version: int
    title: str
    currencies: frozenset[str]  # empty = any
    face_value_min: Amount
    validity_days_max: int  # 0 = no maximum
    anonymous: CardRules
    registered: CardRules
    daily_redeem_limit: Amount
    aml_above: Amount
    real_name_from: Amount
    bank_transfer_from_individual: Amount
    bank_transfer_from_organization: Amount
    full_views_per_hour: int
    cards_per_hour: int
    new_device_freezes: bool
    risk: RiskRules

    @property
    def tag(self) -> str:
        """What movements record: ``name@version``."""
        return f"{self.name}@{self.version}"

    def cards(self, registered: bool) -> CardRules:
        return self.registered if registered else self.anonymous


_SCHEMA: dict[str, Any] = {
    "name": str,
    "version": int,
    "title": str,
    "products": {
        "currencies": list,
        "face_value_min": str,
        "validity_days_max": int,
        "anonymous": "cards",
        "registered": "cards",
    },
    "accounts": {"daily_redeem_limit": str},
    "reports": {"aml_above": str},
    "viewing": {"full_views_per_hour": int, "cards_per_hour": int, "new_device_freezes": bool},
    "risk": {"card": "risk", "account": "risk", "address": "risk", "device": "risk"},
    "orders": {
        "real_name_from": str,
        "bank_transfer_from_individual": str,
        "bank_transfer_from_organization": str,
    },
}
_CARDS: dict[str, Any] = {
    "face_value_max": str,
    "validity_days_min": int,
    "expiry_required": bool,
    "expiry_allowed": bool,
    "loss_reporting": bool,
}
_RISK: dict[str, Any] = {"challenge_after": int, "lock_after": int, "lock_seconds": int}
_SUBTABLES: dict[str, dict[str, Any]] = {"cards": _CARDS, "risk": _RISK}


def _check(table: dict[str, Any], schema: dict[str, Any], where: str) -> None:
    if unknown := set(table) - set(schema):
        raise ProfileError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key, kind in schema.items():
        path = f"{where}.{key}" if where else key
        if key not in table:
            raise ProfileError(f"{path}: missing")
        value = table[key]
        if isinstance(kind, str):
            if not isinstance(value, dict):
                raise ProfileError(f"{path}: must be a table")
            _check(value, _SUBTABLES[kind], path)
        elif isinstance(kind, dict):
            if not isinstance(value, dict):
                raise ProfileError(f"{path}: must be a table")
            _check(value, kind, path)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ProfileError(f"{path}: must be {kind.__name__}")
        elif kind is int and value < 0:
            raise ProfileError(f"{path}: must be >= 0")


def _amount(text: str, path: str) -> Amount:
    if text == "":
        return Amount(None)
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ProfileError(f"{path}: {text!r} is not a decimal amount") from None
    if not value.is_finite() or value <= 0:
        raise ProfileError(f"{path}: {text!r} must be a positive amount")
    return Amount(value)


def _cards(t: dict[str, Any], path: str) -> CardRules:
    rules = CardRules(
        face_value_max=_amount(t["face_value_max"], f"{path}.face_value_max"),
        validity_days_min=t["validity_days_min"],
        expiry_required=t["expiry_required"],
        expiry_allowed=t["expiry_allowed"],
        loss_reporting=t["loss_reporting"],
    )
    if rules.expiry_required and not rules.expiry_allowed:
        raise ProfileError(f"{path}: expiry_required contradicts expiry_allowed = false")
    return rules


def _tier(t: dict[str, Any], path: str) -> RiskTier:
    tier = RiskTier(t["challenge_after"], t["lock_after"], t["lock_seconds"])
    if tier.lock_after < 1 or tier.lock_seconds < 1:
        raise ProfileError(f"{path}: lock_after and lock_seconds must be >= 1")
    if tier.challenge_after >= tier.lock_after:
        raise ProfileError(f"{path}: challenge_after must be below lock_after (0: no challenge tier)")
    return tier


def parse_profile(text: str, source: str = "<profile>") -> Profile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{source}: {e}") from None
    _check(data, _SCHEMA, "")
    p, a, r, o, v = data["products"], data["accounts"], data["reports"], data["orders"], data["viewing"]
    k = data["risk"]
    currencies = p["currencies"]
    if not all(isinstance(c, str) and c in ISO_4217 for c in currencies):
        raise ProfileError(f"{source}: products.currencies must list ISO 4217 codes")
    if data["version"] < 1 or not data["name"]:
        raise ProfileError(f"{source}: a profile needs a name and a version >= 1")
    return Profile(
        name=data["name"],
        version=data["version"],
        title=data["title"],
        currencies=frozenset(currencies),
        face_value_min=_amount(p["face_value_min"], "products.face_value_min"),
        validity_days_max=p["validity_days_max"],
        anonymous=_cards(p["anonymous"], "products.anonymous"),
        registered=_cards(p["registered"], "products.registered"),
        daily_redeem_limit=_amount(a["daily_redeem_limit"], "accounts.daily_redeem_limit"),
        aml_above=_amount(r["aml_above"], "reports.aml_above"),
        real_name_from=_amount(o["real_name_from"], "orders.real_name_from"),
        bank_transfer_from_individual=_amount(
            o["bank_transfer_from_individual"], "orders.bank_transfer_from_individual"
        ),
        bank_transfer_from_organization=_amount(
            o["bank_transfer_from_organization"], "orders.bank_transfer_from_organization"
        ),
        full_views_per_hour=v["full_views_per_hour"],
        cards_per_hour=v["cards_per_hour"],
        new_device_freezes=v["new_device_freezes"],
        risk=RiskRules(
            **{name: _tier(k[name], f"risk.{name}") for name in ("card", "account", "address", "device")}
        ),
    )


def load_profile(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile file by path."""
    path = _DIR / f"{name_or_path}.toml" if name_or_path in BUILTIN else Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        known = ", ".join(BUILTIN)
        raise ProfileError(f"no profile {name_or_path!r} (built in: {known}; or a .toml file): {e}") from None
    profile = parse_profile(text, str(path))
    if name_or_path in BUILTIN and profile.name != name_or_path:
        raise ProfileError(f"{path}: names itself {profile.name!r}")
    return profile
