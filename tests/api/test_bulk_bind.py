"""Bulk-binding an organization's cards to recipients from a CSV, over gRPC and through
``cardmint card bulk-bind``, on SQLite and PostgreSQL: every row gets its own result, a bad
row never stops the others, and a repeated run is idempotent."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from cardmint.cli import main
from cardmint.client import Client, InvalidArgument, OrganizationNotFound, PermissionDenied
from cardmint.server.app import Running
from cardmint.v1 import account_pb2, common_pb2

Connect = Callable[..., Client]


def _setup(connect: Connect, server: Running) -> tuple[Client, str, Client, Client]:
    """(admin, the hr manager's token, a hr member, globex's admin)."""
    admin = connect("admin")
    admin.create_product(sku="GIFT", name="Gift", currency="CNY", denominations=[5000])
    admin.create_organization("acme", request_id="o1")
    admin.create_organization("globex", request_id="o2")
    admin.create_department("acme", "hr", request_id="d1")
    admin.create_department("acme", "sales", request_id="d2")
    addr = f"127.0.0.1:{server.port}"
    lead = admin.add_member(
        "acme", "lead", role="dept_manager", department="hr", request_id="m1", with_token=True
    )
    clerk = admin.add_member("acme", "clerk", department="hr", request_id="m2", with_token=True)
    gboss = admin.add_member("globex", "gboss", role="org_admin", request_id="m3", with_token=True)
    return (
        admin,
        lead.token,
        Client(addr, clerk.token, timeout=30.0),
        Client(addr, gboss.token, timeout=30.0),
    )


def _read(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_bulk_bind_csv_through_the_cli(connect: Connect, server: Running, tmp_path: Path) -> None:
    admin, lead_token, _clerk, gboss = _setup(connect, server)
    addr = f"127.0.0.1:{server.port}"
    lead = Client(addr, lead_token, timeout=30.0)
    lot = lead.create_lot("GIFT", 6, 5000)
    cards = list(lead.stream_lot(lot.id))
    foreign = list(gboss.stream_lot(gboss.create_lot("GIFT", 1, 5000).id))
    platform = list(admin.stream_lot(admin.create_lot("GIFT", 1, 5000).id))
    connect("customer", account="carol").bind_card(cards[2][1])  # bound before the run
    stray = admin.generate(1)[0]  # well-formed, never issued
    typo = cards[5][1][:-1] + ("A" if cards[5][1][-1] != "A" else "B")

    rows = [
        ["code", "recipient"],  # header
        [cards[0][1], "Alice@Example.com"],  # by code, to an email (kept lower case)
        [cards[1][0], "bob"],  # by card number, to an account id
        [stray, "dave"],  # unknown code
        [cards[2][1], "dave"],  # bound to carol already
        [cards[2][0], "carol"],  # bound to carol already: ok
        [foreign[0][1], "erin"],  # another organization's lot
        [platform[0][0], "erin"],  # the platform's own lot
        [cards[0][1], "alice@example.com"],  # duplicate of row 1
        [cards[3][1], "not-an-email@"],  # bad email
        [cards[4][1], "frank", "extra"],  # three columns
        [typo, "gina"],  # a typo in the code
        ["", "hank"],  # no card at all
    ]
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    argv = ["card", "bulk-bind", str(src), "--out", str(out), "--server", addr, "--token", lead_token]
    assert main([*argv, "--request-id", "hand-out-1"]) == 1  # some rows failed

    result = _read(out)
    assert result[0] == ["row", "card", "recipient", "result", "reason", "serial", "account"]
    assert len(result) == len(rows)  # a header plus one line per input row
    by_row = {int(r[0]): r for r in result[1:]}
    assert [by_row[i][3] for i in range(1, len(rows))] == [
        "ok",
        "ok",
        "error",
        "error",
        "ok",
        "error",
        "error",
        "ok",
        "error",
        "error",
        "error",
        "error",
    ]
    assert by_row[1][4:] == ["bound", cards[0][0], "alice@example.com"]
    assert by_row[2][4:] == ["bound", cards[1][0], "bob"]
    assert by_row[3][4] == "unknown card"
    assert by_row[4][4] == "already bound to another account"
    assert by_row[5][4] == "already bound to this recipient"
    assert by_row[6][4] == by_row[7][4] == "unknown card" and by_row[6][5] == ""  # never "not yours"
    assert by_row[8][4] == "already bound to this recipient"
    assert "recipient" in by_row[9][4]
    assert "2 columns" in by_row[10][4]
    assert "typo" in by_row[11][4]
    assert by_row[12][3] == "error"

    # The cards went where the file said; the rest did not move.
    assert admin.get_card(cards[0][0]).bound and admin.get_card(cards[1][0]).bound
    assert not admin.get_card(cards[3][0]).bound and not admin.get_card(cards[4][0]).bound
    alice = connect("customer", account="alice@example.com")
    assert alice.view_secret(cards[0][0], step_up=True).code == cards[0][1]

    # The same request id replays; a new one answers the bound rows ok again.
    out2, out3 = tmp_path / "again.csv", tmp_path / "new.csv"
    assert main([*argv[:4], str(out2), *argv[5:], "--request-id", "hand-out-1"]) == 1
    assert _read(out2) == result
    assert main([*argv[:4], str(out3), *argv[5:], "--request-id", "hand-out-2"]) == 1
    again = {int(r[0]): r for r in _read(out3)[1:]}
    assert again[1][3:5] == ["ok", "already bound to this recipient"]
    assert again[2][3:5] == ["ok", "already bound to this recipient"]

    with server.domain.storage.read() as tx:
        audit = [(e.action, e.detail) for e in tx.audit_entries()]
        events = [e.kind for e in tx.events_after(0)]
    assert sum(1 for a, d in audit if a == "card.bind" and '"bulk": true' in d) == 2
    assert sum(1 for a, _ in audit if a == "org.bulk_bind") == 2  # the replay wrote nothing
    assert events.count("org.cards_bound") == 1


def test_bulk_bind_rules_over_grpc(connect: Connect, server: Running) -> None:
    admin, lead_token, clerk, gboss = _setup(connect, server)
    lead = Client(f"127.0.0.1:{server.port}", lead_token, timeout=30.0)
    cards = list(lead.stream_lot(lead.create_lot("GIFT", 3, 5000).id))
    with pytest.raises(PermissionDenied):  # a plain member hands nothing out
        clerk.bulk_bind("acme", [(cards[0][1], "x")], request_id="c1")
    with pytest.raises(OrganizationNotFound):  # another organization's name
        gboss.bulk_bind("acme", [(cards[0][1], "x")], request_id="g1")
    assert not gboss.bulk_bind("globex", [(cards[0][1], "x")], request_id="g2")[0].ok
    with pytest.raises(InvalidArgument):
        lead.bulk_bind("acme", [], request_id="empty")
    packed = account_pb2.BulkBindRequest(
        organization="acme",
        cards=common_pb2.PackedStrings(data=b"ab", lengths=[1, 1]),
        recipients=common_pb2.PackedStrings(data=b"a", lengths=[1]),
        request_id="mismatch",
    )
    with pytest.raises(InvalidArgument):
        lead._call(lead.accounts.BulkBind, packed)
    # Staff hand out on the organization's behalf; a sales manager cannot reach hr's cards.
    assert admin.bulk_bind("acme", [(cards[0][0], "ivy")], request_id="a1")[0].reason == "bound"
    sales = admin.add_member(
        "acme", "smgr", role="dept_manager", department="sales", request_id="m9", with_token=True
    )
    with Client(f"127.0.0.1:{server.port}", sales.token) as s:
        res = s.bulk_bind("acme", [(cards[1][0], "jon")], request_id="s1")
    assert not res[0].ok and res[0].reason == "unknown card"
    replay = admin.bulk_bind("acme", [(cards[0][0], "ivy")], request_id="a1")
    assert replay[0].replayed and replay[0].ok


def test_bulk_bind_matches_a_model_of_the_rows(connect: Connect, server: Running) -> None:
    """Random rows (seeded): one result per row, in order, exactly as a simple model of
    "first valid recipient wins, the same recipient again is ok, another is a conflict"."""
    _, lead_token, _, _ = _setup(connect, server)
    lead = Client(f"127.0.0.1:{server.port}", lead_token, timeout=30.0)
    rng = random.Random(20261128)
    cards = list(lead.stream_lot(lead.create_lot("GIFT", 8, 5000).id))
    owner: dict[str, str] = {}
    for round_no in range(8):
        rows = [
            (rng.choice(cards)[rng.randrange(2)], rng.choice(["kim", "lee", "KIM@x.org", "bad@", " "]))
            for _ in range(rng.randrange(1, 12))
        ]
        results = lead.bulk_bind("acme", rows, request_id=f"model-{round_no}")
        assert len(results) == len(rows)
        for (card, who), r in zip(rows, results, strict=True):
            serial = next(s for s, c in cards if card in (s, c))
            account = who.strip().lower() if "@" in who else who.strip()
            if who.strip() in ("", "bad@"):
                assert (r.ok, r.serial) == (False, serial)
            elif serial not in owner:
                assert (r.ok, r.reason, r.account) == (True, "bound", account)
                owner[serial] = account
            elif owner[serial] == account:
                assert (r.ok, r.reason) == (True, "already bound to this recipient")
            else:
                assert (r.ok, r.reason) == (False, "already bound to another account")
    for serial, _ in cards:
        assert lead.get_card(serial).bound == (serial in owner)


def test_cli_sends_big_files_in_chunks(
    connect: Connect, server: Running, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More rows than one request holds: several idempotent requests (ID:0, ID:1, ...), one
    result file in input order."""
    from cardmint.cli import card as card_cli

    monkeypatch.setattr(card_cli, "BULK_CHUNK", 3)
    _, lead_token, _, _ = _setup(connect, server)
    addr = f"127.0.0.1:{server.port}"
    lead = Client(addr, lead_token, timeout=30.0)
    cards = list(lead.stream_lot(lead.create_lot("GIFT", 7, 5000).id))
    src, out = tmp_path / "in.csv", tmp_path / "out.csv"
    src.write_text("".join(f"{serial},emp{i}@corp.example\n" for i, (serial, _) in enumerate(cards)))
    argv = ["card", "bulk-bind", str(src), "--out", str(out), "--server", addr, "--token", lead_token]
    assert main([*argv, "--request-id", "big"]) == 0  # the organization is the token's own
    lines = _read(out)[1:]
    assert [(r[0], r[3], r[4], r[5]) for r in lines] == [
        (str(i + 1), "ok", "bound", serial) for i, (serial, _) in enumerate(cards)
    ]
    assert main([*argv, "--request-id", "big"]) == 0
    assert _read(out)[1:] == lines  # replayed, chunk by chunk
    with server.domain.storage.read() as tx:
        runs = [e.detail for e in tx.audit_entries() if e.action == "org.bulk_bind"]
    assert len(runs) == 3  # 7 rows in chunks of 3: three requests, each done once
