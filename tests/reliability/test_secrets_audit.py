"""Secrets and audit (issue 5, item 15), on SQLite and PostgreSQL: after a whole workflow
through gRPC no plaintext code is anywhere on disk, in the logs or in an error message; and
every tampered, deleted or reordered audit row is detected, at the row it happened to."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
from cardmint.client import BadCheck, CardmintError, Client
from cardmint.kernel import get_kernel
from cardmint.server.app import Running
from cardmint.server.domain.audit import verify_storage
from cardmint.server.storage import AuditEntry, Storage, UnitOfWork

from tests.server.test_storage_lots import _codes_in, _database_bytes

from .conftest import Report, Sizes
from .test_races import _lot

Clients = Callable[[str], list[Client]]
Token = Callable[..., str]


def _typo(code: str, rng: random.Random) -> str:
    """The code with one symbol changed (its check character then fails)."""
    plain = code.replace("-", "")
    i = rng.randrange(len(plain))
    other = rng.choice([c for c in "ABCDEFGHJKLMNPQRSTUVWXYZ23456789" if c != plain[i]])
    return plain[:i] + other + plain[i + 1 :]


def test_no_plaintext_code_on_disk_in_logs_or_errors(
    server: Running,
    clients: Clients,
    token: Token,
    sizes: Sizes,
    seed: int,
    report: Report,
    backend: str,
    tmp_path: Path,
    storage_url: str,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    rng = random.Random(seed)
    admin = clients(token("admin"))[0]
    cards = _lot(admin, "SECRET", 5000, 60)
    known = {code for _, code in cards}
    errors: list[str] = []
    suggestions: list[str] = []

    def refused(call: Callable[[], object]) -> None:
        try:
            call()
        except BadCheck as e:  # the hint tier: the caller's own code, corrected, by design
            suggestions.append(e.metadata.get("suggestion", ""))
            errors.append(f"{e.reason} {e}")
        except CardmintError as e:
            errors.append(f"{e.reason} {e} {sorted(e.metadata.items())} {e.violations}")
        else:
            raise AssertionError("expected a refusal")

    people = [clients(token("customer", account=f"{seed}-c{i}"))[i] for i in range(8)]
    for i, person in enumerate(people):
        serial, code = cards[i]
        person.bind_card(code.lower(), challenge_passed=True)
        person.view_secret(serial, step_up=True)
        person.view_secret(serial)
        person.redeem(serial, 100, "CNY")
        refused(partial(person.bind_card, _typo(cards[20 + i][1], rng), challenge_passed=True))
        refused(partial(person.bind_card, "ABCD-EFGH-JKLM-NPQR", challenge_passed=True))
        refused(partial(person.redeem, cards[30 + i][0], 1, "CNY"))
    # Loss report and reissue: a new code, seen by its owner only.
    people[0].report_loss(cards[0][0], reason="lost", request_id=f"{seed}-loss")
    [pending] = [r for r in admin.loss_reports() if r.card.serial == cards[0][0]]
    reviewed = admin.review_loss(pending.id, approve=True, note="ok", request_id=f"{seed}-review")
    known.add(people[0].view_secret(reviewed.new_card.serial, step_up=True).code)
    # The shop: a lot stocked unexported, an order paid, its codes revealed to the buyer.
    admin.create_product(sku="SHOP", name="SHOP", currency="CNY", denominations=[500])
    admin.stock_pool(admin.create_lot("SHOP", 10, 500).id)
    order = people[1].create_order([("SHOP", 500, 3)], request_id=f"{seed}-order")
    admin.confirm_payment(order.id, f"{seed}-pay", 1500, "CNY")
    known |= {c.code for c in people[1].get_order(order.id, reveal=True).codes}
    assert len(known) == 60 + 1 + 3

    kernel = get_kernel()
    plain = {c.replace("-", "") for c in known}
    wanted = {c.encode() for c in known} | {c.encode() for c in plain}
    pg = request.getfixturevalue("pg_server") if backend == "postgres" else None
    disk = _database_bytes(backend, tmp_path, pg, server.domain.storage, storage_url)
    logs = "\n".join(r.getMessage() + " " + str(r.__dict__) for r in caplog.records).encode()
    messages = "\n".join(errors).encode()
    on_disk, in_logs, in_errors = (_codes_in(b, wanted) for b in (disk, logs, messages))
    hints = [s for s in suggestions if s]
    report(
        "15-no-plaintext",
        codes=len(known),
        disk_bytes=len(disk),
        log_records=len(caplog.records),
        error_messages=len(errors),
        on_disk=len(on_disk),
        in_logs=len(in_logs),
        in_errors=len(in_errors),
        bad_check_hints=len(hints),
    )
    assert on_disk == [] and in_logs == [] and in_errors == []
    # A hint only ever names the code the caller mistyped, never another card's.
    assert all(h.replace("-", "") in {c.replace("-", "") for _, c in cards[20:28]} for h in hints)
    assert kernel is not None and len(caplog.records) > 0 and len(errors) == 3 * len(people)


_TAMPER_OPS = ("edit", "delete", "swap", "relink")


def _tamper_sql(backend: str, on: bool) -> list[str]:
    if backend == "sqlite":
        if on:
            return ["DROP TRIGGER IF EXISTS audit_no_update", "DROP TRIGGER IF EXISTS audit_no_delete"]
        return [
            "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log"
            " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_log"
            " BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END",
        ]
    verb = "DISABLE" if on else "ENABLE"
    return [f"ALTER TABLE audit_log {verb} TRIGGER audit_append_only"]


def test_every_tampered_audit_row_is_named(
    storage: Storage, backend: str, sizes: Sizes, seed: int, report: Report
) -> None:
    """Random rows are edited, deleted, swapped with a neighbour or relinked, one at a time;
    each time the verifier names exactly that row, then the row is put back and the chain
    verifies again."""
    rng = random.Random(seed)
    n = 60
    for i in range(n):

        def append(tx: UnitOfWork, i: int = i) -> AuditEntry:
            return tx.append_audit(f"token:{i % 5}", "card.bind", f"card:{i}", f'{{"n":{i}}}')

        storage.run(append)
    assert verify_storage(storage).events == n
    rounds = 200 if sizes.soak else 40
    caught: dict[str, int] = dict.fromkeys(_TAMPER_OPS, 0)
    for _ in range(rounds):
        op = rng.choice(_TAMPER_OPS)
        row = rng.randrange(1, n)  # 1..n-1: "swap" takes row and row + 1
        with storage.read() as tx:
            original = next(e for e in tx.audit_entries(after_id=row - 1, limit=1))
        if op == "edit":
            field = rng.choice(["actor", "action", "subject", "detail"])
            tamper = [f"UPDATE audit_log SET {field} = {field} || 'x' WHERE id = {row}"]
            restore = [
                f"UPDATE audit_log SET {field} = substr({field}, 1, length({field}) - 1) WHERE id = {row}"
            ]
            why = "does not match its hash"
        elif op == "delete":
            tamper = [f"DELETE FROM audit_log WHERE id = {row}"]
            restore = []  # re-inserted below from the saved entry
            why = "missing"
        elif op == "swap":
            tamper = [
                f"UPDATE audit_log SET id = -1 WHERE id = {row}",
                f"UPDATE audit_log SET id = {row} WHERE id = {row + 1}",
                f"UPDATE audit_log SET id = {row + 1} WHERE id = -1",
            ]
            restore = list(tamper)  # the same three statements swap them back
            why = "does not link"
        else:  # relink: point the row at a made-up predecessor, keeping its own hash
            tamper = [f"UPDATE audit_log SET prev_hash = hash WHERE id = {row}"]
            restore = []
            why = "does not link"
        with storage.transaction() as tx:
            for sql in (*_tamper_sql(backend, True), *tamper):
                tx._execute(sql)  # type: ignore[attr-defined]
        verdict = verify_storage(storage)
        assert not verdict.ok and verdict.first_bad == row and why in verdict.problem, (op, row, verdict)
        caught[op] += 1
        with storage.transaction() as tx:
            for sql in restore:
                tx._execute(sql)  # type: ignore[attr-defined]
            if op == "delete":
                tx._execute(  # type: ignore[attr-defined]
                    "INSERT INTO audit_log (id, at, actor, action, subject, detail, prev_hash, hash)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        original.id,
                        tx._ts(original.at),  # type: ignore[attr-defined]
                        original.actor,
                        original.action,
                        original.subject,
                        original.detail,
                        original.prev_hash,
                        original.hash,
                    ),
                )
            if op == "relink":
                tx._execute("UPDATE audit_log SET prev_hash = ? WHERE id = ?", (original.prev_hash, row))  # type: ignore[attr-defined]
            for sql in _tamper_sql(backend, False):
                tx._execute(sql)  # type: ignore[attr-defined]
        assert verify_storage(storage).ok
    report("15-audit-tamper", events=n, rounds=rounds, **{f"caught_{k}": v for k, v in caught.items()})
    assert sum(caught.values()) == rounds
