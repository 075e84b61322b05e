"""clients/rust against a real ``cardmint serve``: the API is usable from another language.

The Rust demo (``cardmint-rs-demo``, tonic + prost generated from proto/cardmint/v1) is
built with cargo, run against ``cardmint serve`` on 127.0.0.1 (a subprocess, on SQLite and
on PostgreSQL), and everything it says it did is then checked independently through the
Python client: the product and the lot exist, the streamed serials are the lot's, the card
is bound to the account (the account's own customer token sees the balance), the balance is
what the Rust client printed, and its redemption happened once although it was sent twice.

The build shares cargo's target directory (``CARGO_TARGET_DIR`` or ./target) with
``make rust-check``: the dependencies are compiled there by ``cargo test`` already (the test
profile and the dev profile share them), so this build only compiles the client crate.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cardmint.client import Client
from cardmint.v1 import balance_pb2, lot_pb2

from tests.cli_server.conftest import CLI_TIMEOUT, cli_env, wait_for_port

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT = 1800  # from nothing on a busy 2-core machine; normally seconds
RUN_TIMEOUT = 300


@pytest.fixture(scope="session")
def rust_demo() -> Path:
    """The ``cardmint-rs-demo`` binary, built (or found up to date) by cargo."""
    cargo = shutil.which("cargo")
    assert cargo is not None, "cargo is required (a Rust toolchain: see README)"
    done = subprocess.run(
        [cargo, "build", "-p", "cardmint-client", "--bin", "cardmint-rs-demo", "--locked",
         "--message-format=json-render-diagnostics"],
        cwd=REPO, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-6000:]
    exes = []
    for line in done.stdout.splitlines():
        msg = json.loads(line) if line.startswith("{") else {}
        if msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "cardmint-rs-demo":
            exes.append(Path(msg["executable"]))
    assert len(exes) == 1, done.stdout[-4000:]
    assert exes[0].is_file()
    return exes[0]


@dataclass
class Served:
    addr: str
    work: Path
    env: dict[str, str]
    db: str

    def token(self, role: str, *extra: str) -> str:
        done = subprocess.run(
            ["cardmint", "token", "create", "--role", role, "--db", self.db, *extra],
            cwd=self.work, env=self.env, capture_output=True, text=True, timeout=CLI_TIMEOUT, check=True,
        )  # fmt: skip
        return done.stdout.strip()


@pytest.fixture
def served(storage_url: str, bindir: Path, tmp_path: Path) -> Iterator[Served]:
    """``cardmint serve --db <the test's database>`` on an ephemeral port of 127.0.0.1."""
    work = tmp_path / "work"
    work.mkdir()
    env = cli_env(bindir)
    proc = subprocess.Popen(
        ["cardmint", "serve", "--db", storage_url, "--listen", "127.0.0.1:0", "--grace", "5"],
        cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = wait_for_port(proc)
        yield Served(f"127.0.0.1:{port}", work, env, storage_url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
    assert rc == 0


def run_demo(exe: Path, served: Served, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in served.env.items() if k not in ("CARDMINT_TOKEN", "CARDMINT_SERVER")}
    env["CARDMINT_TOKEN"] = token
    return subprocess.run(
        [str(exe), "--server", served.addr, *args],
        cwd=served.work, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip


def records(stdout: str) -> dict[str, list[dict[str, str]]]:
    """``WHAT key=value ...`` lines, grouped by WHAT."""
    out: dict[str, list[dict[str, str]]] = {}
    for line in stdout.splitlines():
        what, *pairs = line.split(" ")
        fields = dict(p.split("=", 1) for p in pairs)
        out.setdefault(what, []).append(fields)
    return out


def test_rust_client_walkthrough_is_real(rust_demo: Path, served: Served, backend: str) -> None:
    admin = served.token("admin")
    sku = f"RS-{backend}"
    done = run_demo(rust_demo, served, admin, "--sku", sku, "--account", "alice", "--count", "7",
                    "--face-value", "10000", "--redeem", "2500", "--request-id", "rs-redeem-1")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    said = records(done.stdout)
    assert [r["server"] for r in said["connected"]] == [served.addr]
    assert said["product"] == [
        {"sku": sku, "id": said["product"][0]["id"], "currency": "CNY", "denominations": "10000"}
    ]
    product_id = int(said["product"][0]["id"])
    lot_id = int(said["lot"][0]["id"])
    serials = [r["serial"] for r in said["card"]]
    (bound,) = said["bound"]
    first, replay = said["redeemed"]
    card_balance, account_balance = said["balance"]
    assert said["streamed"] == [{"codes": "7", "chunks": said["streamed"][0]["chunks"]}]
    assert first["replayed"] == "false" and replay["replayed"] == "true"
    assert first["transaction"] == replay["transaction"]
    assert card_balance == {"serial": bound["serial"], "minor_units": "7500", "currency": "CNY"}
    assert account_balance == {"account": "alice", "minor_units": "7500", "currency": "CNY"}
    assert said["ok"][0]["balance"] == "7500"

    with Client(served.addr, admin) as c:
        product = c.get_product(sku)
        assert product.id == product_id
        assert list(product.denominations) == [10000] and product.currency == "CNY"
        lot = c.get_lot(lot_id)
        assert lot.count == 7 and lot.status == lot_pb2.LOT_STATUS_COMPLETE and lot.plaintext_exported
        # The serials the Rust client streamed are exactly the lot's; an admin may export again.
        exported = list(c.stream_lot(lot_id))
        assert [s for s, _ in exported] == serials
        # Only the serials and a masked code were printed, never a secret code.
        for _, code in exported:
            assert code not in done.stdout
            assert code.replace("-", "") not in done.stdout
        assert bound == {"serial": serials[0], "account": "alice", "masked_code": bound["masked_code"]}
        assert bound["masked_code"].endswith(exported[0][1][-4:])
        card = c.get_card(serials[0])
        assert card.bound
        assert (card.balance.minor_units, card.balance.currency) == (7500, "CNY")
        assert not any(c.get_card(s).bound for s in serials[1:])
        # One redemption although the Rust client sent it twice; the same id from Python replays.
        redeems = [
            t for t in c.transactions(serial=serials[0]) if t.kind == balance_pb2.TRANSACTION_KIND_REDEEM
        ]
        assert [(t.id, t.request_id, t.amount.minor_units) for t in redeems] == [
            (int(first["transaction"]), "rs-redeem-1", -2500)
        ]
        again = c.redeem(serials[0], 2500, "CNY", request_id="rs-redeem-1")
        assert again.replayed and again.transaction_id == int(first["transaction"])
        assert again.balance_after.minor_units == 7500

    # Bound to alice: her own customer token sees the card's money as hers, bob's does not.
    with Client(served.addr, served.token("customer", "--account", "alice")) as alice:
        mine = alice.balance()
        assert [(m.minor_units, m.currency) for m in mine.balances] == [(7500, "CNY")]
    with Client(served.addr, served.token("customer", "--account", "bob")) as bob:
        assert [m.minor_units for m in bob.balance().balances if m.minor_units] == []


def test_rust_client_fails_loudly(rust_demo: Path, served: Served) -> None:
    admin = served.token("admin")
    ok = run_demo(rust_demo, served, admin, "--sku", "RS-TWICE", "--count", "2")
    assert ok.returncode == 0, ok.stderr
    # The same SKU again: the server refuses the product, the client stops there with 1.
    again = run_demo(rust_demo, served, admin, "--sku", "RS-TWICE", "--count", "2")
    assert again.returncode == 1
    assert "CatalogService.CreateProduct failed" in again.stderr
    assert "lot " not in again.stdout
    # A token the server does not know: 2, and nothing was created.
    bad = run_demo(rust_demo, served, "not-a-token", "--sku", "RS-BADTOKEN")
    assert bad.returncode == 2
    assert "Unauthenticated" in bad.stderr
    # No token at all, or nonsense arguments: 2 before any call.
    assert run_demo(rust_demo, served, "", "--sku", "RS-NOTOKEN").returncode == 2
    assert run_demo(rust_demo, served, admin, "--count", "zero").returncode == 2
    with Client(served.addr, admin) as c:
        assert sorted(p.sku for p in c.list_products()) == ["RS-TWICE"]
        assert [lot.count for lot in c.list_lots()] == [2]
