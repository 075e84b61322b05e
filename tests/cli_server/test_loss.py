"""``cardmint card report-loss`` and ``review-loss`` against a live server."""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

from cardmint.server.app import Running

Cli = Callable[..., CompletedProcess[str]]


def test_report_and_review_a_loss_by_hand(cli: Cli, server: Running, tmp_path: Path) -> None:
    assert cli("product", "create", "--sku", "GC", "--name", "G", "--currency", "CNY",
               "--denominations", "100").returncode == 0  # fmt: skip
    assert cli("lot", "create", "--product", "GC", "-n", "2", "--out", "lot.csv").returncode == 0
    serial, code = list(csv.reader((tmp_path / "work" / "lot.csv").read_text().splitlines()))[1][:2]
    holder = server.domain.auth.create_token("customer", account="alice").token
    assert cli("card", "bind", "--code", code, token=holder).returncode == 0
    reported = cli(
        "card", "report-loss", "--serial", serial, "--reason", "lost", "--request-id", "r1", token=holder
    )
    assert reported.returncode == 0, reported.stderr
    m = re.match(r"loss report (\d+): pending; card \S+ code \S+ frozen", reported.stdout)
    assert m, reported.stdout
    again = cli(
        "card", "report-loss", "--serial", serial, "--reason", "lost", "--request-id", "r1", token=holder
    )
    assert again.stdout.startswith(f"loss report {m.group(1)}: pending (replayed)")
    done = cli("card", "review-loss", "--report", m.group(1), "--approve", "--note", "checked")
    assert done.returncode == 0, done.stderr
    assert (
        "approved" in done.stdout and "void" in done.stdout and "reissued 100.00 CNY on card " in done.stdout
    )
    # Twice: refused on business grounds (exit 1), one line naming the reason.
    twice = cli("card", "review-loss", "--report", m.group(1), "--reject", "--note", "late")
    assert twice.returncode == 1 and "LOSS_REPORT_DECIDED" in twice.stderr
