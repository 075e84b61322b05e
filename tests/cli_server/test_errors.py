"""Failed calls: one line on stderr with the reason, exit 1 (business refusal) or 2."""

from __future__ import annotations

import argparse
import csv
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess

import grpc
import pytest
from cardmint.cli import UsageError
from cardmint.cli._remote import describe, to_minor
from cardmint.cli.admin import duration
from cardmint.client import BadCheck, CardLocked, InsufficientFunds
from cardmint.server.app import Running

Cli = Callable[..., CompletedProcess[str]]


def _one_line(p: CompletedProcess[str], status: int) -> str:
    assert p.returncode == status, (p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if not ln.startswith("cardmint: request id ")]
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


@pytest.fixture
def card(cli: Cli, tmp_path: Path) -> tuple[str, str]:
    """(serial, code) of a fresh 100 CNY card, from a lot written by the CLI."""
    assert cli("product", "create", "--sku", "GC", "--name", "G", "--currency", "CNY",
               "--denominations", "100").returncode == 0  # fmt: skip
    assert cli("lot", "create", "--product", "GC", "-n", "3", "--out", "lot.csv").returncode == 0
    row = list(csv.reader((tmp_path / "work" / "lot.csv").read_text().splitlines()))[1]
    return row[0], row[1]


def test_business_refusals_exit_1(cli: Cli, card: tuple[str, str]) -> None:
    serial, code = card
    assert cli("card", "bind", "--code", code, "--account", "alice").returncode == 0
    line = _one_line(cli("redeem", "--card", serial, "--amount", "500"), 1)
    assert line.startswith("cardmint: INSUFFICIENT_FUNDS: ")
    line = _one_line(cli("card", "get", "--serial", "99999999999"), 1)
    assert "CARD_NOT_FOUND" in line
    line = _one_line(cli("product", "create", "--sku", "GC", "--name", "G", "--currency", "CNY",
                         "--denominations", "100"), 1)  # fmt: skip
    assert "PRODUCT_EXISTS" in line


def test_redeem_prints_a_request_id_to_retry_with(cli: Cli, card: tuple[str, str]) -> None:
    serial, code = card
    assert cli("card", "bind", "--code", code, "--account", "alice").returncode == 0
    p = cli("redeem", "--card", serial, "--amount", "10.5")
    assert p.returncode == 0, p.stderr
    rid = p.stderr.split("--request-id ")[1].split(")")[0]
    assert f"request id {rid}" in p.stdout
    assert "balance 89.50 CNY" in p.stdout
    again = cli("redeem", "--card", serial, "--amount", "10.5", "--request-id", rid)
    assert "replayed" in again.stdout
    assert cli("balance", "--card", serial).stdout == "89.50 CNY\n"


def test_input_and_access_errors_exit_2(cli: Cli, card: tuple[str, str]) -> None:
    serial, code = card
    # One wrong symbol in the middle of the code: a bad check, with the issued code suggested.
    i = 5
    typo = code[:i] + ("2" if code[i] != "2" else "3") + code[i + 1 :]
    line = _one_line(cli("card", "bind", "--code", typo, "--account", "alice"), 2)
    assert "CODE_BAD_CHECK" in line
    assert f"did you mean {code}?" in line
    assert "UNAUTHENTICATED" in _one_line(cli("balance", "--card", serial, token="cm_nope"), 2)
    assert "no token" in _one_line(cli("balance", "--card", serial, token=""), 2)
    assert "more decimals" in _one_line(cli("redeem", "--card", serial, "--amount", "1.001"), 2)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _one_line(cli("balance", "--card", serial, "--server", f"127.0.0.1:{port}"), 2)
    assert "UNAVAILABLE" in line


def test_describe() -> None:
    locked = CardLocked("locked", code=grpc.StatusCode.RESOURCE_EXHAUSTED, retry_after=42.0)
    assert describe(locked) == ("CARD_LOCKED: locked (try again in 42 s)", 1)
    bad = BadCheck("bad check", code=grpc.StatusCode.INVALID_ARGUMENT, metadata={"suggestion": "ABCD-EFGH"})
    assert describe(bad) == ("CODE_BAD_CHECK: bad check (did you mean ABCD-EFGH?)", 2)
    poor = InsufficientFunds(
        "insufficient balance", code=grpc.StatusCode.FAILED_PRECONDITION,
        metadata={"balance": "7550", "currency": "CNY"},
    )  # fmt: skip
    assert describe(poor) == ("INSUFFICIENT_FUNDS: insufficient balance (balance 75.50 CNY)", 1)


def test_amounts() -> None:
    assert to_minor("25", "CNY") == 2500
    assert to_minor("25.5", "CNY") == 2550
    assert to_minor("1000", "JPY") == 1000
    assert to_minor("1.234", "KWD") == 1234
    for bad in ("1.001", "x", "nan", "inf"):
        with pytest.raises(UsageError):
            to_minor(bad, "CNY")


def test_a_token_made_to_expire_is_refused_once_it_has(
    cli: Cli, server: Running, storage_url: str, tmp_path: Path
) -> None:
    """``token create --expires-in``: the token on stdout alone, its expiry on stderr, and
    the server takes it. A token past its expiry is answered TOKEN_EXPIRED (exit 2)."""
    made = cli("token", "create", "--role", "operator", "--expires-in", "1h",
               "--db", storage_url, "--var", str(tmp_path / "var"))  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("cm_") and "\n" not in token
    expires = datetime.fromisoformat(made.stderr.strip().removeprefix("expires "))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert cli("product", "list", token=token).returncode == 0
    brief = server.domain.auth.create_token("operator", expires_in=1)
    assert brief.expires_at is not None
    time.sleep(max(0.0, (brief.expires_at - datetime.now(UTC)).total_seconds()) + 0.05)
    refused = _one_line(cli("product", "list", token=brief.token), 2)
    assert refused == "cardmint: TOKEN_EXPIRED: this token has expired; ask for a new one"
    bad = cli("token", "create", "--role", "operator", "--expires-in", "soon", "--db", storage_url)
    assert bad.returncode == 2 and "a duration such as 3600, 15m, 12h, 30d or 2w" in bad.stderr
    too_long = cli("token", "create", "--role", "operator", "--expires-in", "11000d",
                   "--db", storage_url, "--var", str(tmp_path / "var"))  # fmt: skip
    assert too_long.returncode == 2 and "expires_in_seconds" in too_long.stderr


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("12h", 43_200), ("30d", 2_592_000), (" 2W ", 1_209_600)],
)
def test_durations(text: str, seconds: int) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "1.5h", "-5", "5y", "1 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
