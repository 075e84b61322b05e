"""``cardmint order`` beyond the README's walk-through, as a person runs it against a live
server on 127.0.0.1 (SQLite and PostgreSQL): manual review, cancel, listing by state, and
the refusals (one line, exit 1 for business refusals, 2 for bad input)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable

from cardmint.server.app import Running

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _ok(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_review_cancel_list_and_refusals(cli: Cli, server: Running) -> None:
    bob = server.domain.auth.create_token("customer", account="bob").token
    _ok(cli("product", "create", "--sku", "REV-1", "--name", "r", "--currency", "CNY",
            "--denominations", "10,20", "--delivery", "manual"))  # fmt: skip
    # Two denominations: the face value must be named.
    vague = cli("order", "stock", "--product", "REV-1", "-n", "3")
    assert vague.returncode == 2 and "--face-value is needed for REV-1 (one of 10.00, 20.00)" in vague.stderr
    stocked = _ok(cli("order", "stock", "--product", "REV-1", "-n", "3", "--face-value", "10"))
    lot = re.fullmatch(r"pool REV-1: lot (\d+), 3 codes for sale", stocked[0])
    assert lot is not None, stocked
    # Stocking the lot again (a retry) changes nothing.
    again = _ok(cli("order", "stock", "--lot", lot.group(1)))
    assert again == [f"pool REV-1: lot {lot.group(1)}, 3 codes for sale (already stocked: nothing changed)"]

    # More than the pool holds: a clean refusal, exit 1, nothing reserved.
    sold_out = cli("order", "create", "--product", "REV-1", "--face-value", "10", "-n", "4", "--token", bob)
    assert sold_out.returncode == 1 and "\ncardmint: SOLD_OUT: " in sold_out.stderr
    assert _ok(cli("order", "pool", "--product", "REV-1")) == [
        "pool REV-1 10.00 CNY: 3 available, 0 reserved, 0 sold, 0 returned"
    ]
    first = _ok(cli("order", "create", "--product", "REV-1", "--face-value", "10", "-n", "2",
                    "--token", bob, "--request-id", "bob-1", "-q"))  # fmt: skip
    second = _ok(cli("order", "create", "--product", "REV-1", "--face-value", "10",
                     "--account", "carol", "--request-id", "carol-1", "-q"))  # fmt: skip
    a, b = int(first[0]), int(second[0])
    # A retry with the same request id answers the same order.
    assert _ok(cli("order", "create", "--product", "REV-1", "--face-value", "10", "-n", "2",
                   "--token", bob, "--request-id", "bob-1", "-q")) == [str(a)]  # fmt: skip
    wrong = cli("order", "pay", "--order", str(a), "--payment-id", "p-1", "--amount", "19.99")
    assert wrong.returncode == 1 and "PAYMENT_MISMATCH" in wrong.stderr
    parked = _ok(cli("order", "pay", "--order", str(a), "--payment-id", "p-1", "--amount", "20"))
    assert parked[0].startswith(f"order {a}: review, 2 x REV-1 at 10.00 CNY") and ", deliver by " in parked[0]
    assert len(parked) == 1  # nothing delivered while it waits
    assert _ok(cli("order", "cancel", "--order", str(b)))[0].startswith(f"order {b}: cancelled, ")
    listed = _ok(cli("order", "list", "--status", "review"))
    assert len(listed) == 1 and listed[0].startswith(f"order {a}: review")
    assert _ok(cli("order", "list", "--account", "nobody")) == ["no orders"]
    assert len(_ok(cli("order", "list", "--limit", "1"))) == 1
    approved = _ok(cli("order", "review", "--order", str(a), "--approve", "--reason", "checked"))
    assert approved[0].startswith(f"order {a}: delivered, ")
    # Only the buyer reveals; the buyer cannot report payments.
    assert cli("order", "get", "--order", str(a), "--reveal").returncode == 2
    shown = _ok(cli("order", "get", "--order", str(a), "--reveal", "--token", bob))
    assert len(shown) == 3 and all("*" not in ln for ln in shown[1:])
    denied = cli("order", "pay", "--order", str(a), "--payment-id", "p-2", "--amount", "20", "--token", bob)
    assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr
    gone = cli("order", "get", "--order", "999")
    assert gone.returncode == 1 and "ORDER_NOT_FOUND" in gone.stderr
    bad = cli("order", "create", "--product", "REV-1", "--face-value", "10", "-n", "0")
    assert bad.returncode == 2 and bad.stderr == "cardmint: -n must be at least 1\n"


def test_retire_and_reinstate_a_product(cli: Cli, server: Running) -> None:
    bob = server.domain.auth.create_token("customer", account="bob").token
    _ok(cli("product", "create", "--sku", "OLD-1", "--name", "old card", "--currency", "CNY",
            "--denominations", "10"))  # fmt: skip
    _ok(cli("order", "stock", "--product", "OLD-1", "-n", "2"))
    retired = _ok(cli("product", "retire", "OLD-1", "--reason", "discontinued"))
    assert re.fullmatch(
        r"product OLD-1\told card\t.*\tretired \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", retired[0]
    )
    # Listed with its state; left out of --on-sale.
    assert _ok(cli("product", "list"))[-1].endswith(retired[0].rsplit("\t", 1)[1])
    assert not any(line.startswith("OLD-1\t") for line in _ok(cli("product", "list", "--on-sale")))
    refused = cli("order", "create", "--product", "OLD-1", "--face-value", "10", "--token", bob)
    assert refused.returncode == 1 and "\ncardmint: PRODUCT_RETIRED: " in refused.stderr
    pool = _ok(cli("order", "pool", "--product", "OLD-1"))
    assert pool[0].startswith("pool OLD-1: product retired ") and pool[0].endswith(" UTC; nothing is sold")
    assert pool[1] == "pool OLD-1 10.00 CNY: 0 available, 2 withdrawn, 0 reserved, 0 sold, 0 returned"
    denied = cli("product", "retire", "OLD-1", "--token", bob)
    assert denied.returncode == 2 and "PERMISSION_DENIED" in denied.stderr  # not a business refusal
    back = _ok(cli("product", "reinstate", "OLD-1"))
    assert back[0].startswith("product OLD-1\t") and back[0].endswith("\ton sale")
    assert _ok(cli("order", "pool", "--product", "OLD-1")) == [
        "pool OLD-1 10.00 CNY: 2 available, 0 reserved, 0 sold, 0 returned"
    ]
