"""``cardmint transfer``: a balance moved between two cards of one holder, idempotent by
request id, and a refusal as one line with its reason (exit 1)."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

Cli = Callable[..., CompletedProcess[str]]


def test_transfer_between_two_cards(cli: Cli, tmp_path: Path) -> None:
    assert cli("product", "create", "--sku", "GC", "--name", "G", "--currency", "CNY",
               "--denominations", "100").returncode == 0  # fmt: skip
    assert cli("lot", "create", "--product", "GC", "-n", "2", "--out", "lot.csv").returncode == 0
    (a, code_a), (b, code_b) = [
        (r[0], r[1]) for r in list(csv.reader((tmp_path / "work" / "lot.csv").read_text().splitlines()))[1:]
    ]
    for code in (code_a, code_b):
        assert cli("card", "bind", "--code", code, "--account", "alice").returncode == 0
    assert cli("redeem", "--card", b, "--amount", "40", "--request-id", "spend-b").returncode == 0

    p = cli("transfer", "--from", a, "--to", b, "--amount", "25.5", "--request-id", "move-1")
    assert p.returncode == 0, p.stderr
    assert f"moved 25.50 CNY from card {a} (balance 74.50 CNY) to card {b} (balance 85.50 CNY)" in p.stdout
    again = cli("transfer", "--from", a, "--to", b, "--amount", "25.5", "--request-id", "move-1")
    assert again.returncode == 0 and "replayed" in again.stdout
    assert cli("balance", "--card", a).stdout == "74.50 CNY\n"

    full = cli("transfer", "--from", a, "--to", b, "--amount", "20")  # b has room for 14.50 only
    assert full.returncode == 1 and "Traceback" not in full.stderr
    assert [ln for ln in full.stderr.splitlines() if ln.startswith("cardmint: OVER_FACE_VALUE")]
    assert cli("balance", "--card", b).stdout == "85.50 CNY\n"
