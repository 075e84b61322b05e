"""The compliance profile's purchase rules on orders, over gRPC, on SQLite and PostgreSQL:
from a threshold on the buyer's real name must be verified, and from another only a bank
transfer pays (cn-prepaid: real name at 10,000 yuan, bank transfer at 50,000 for
individuals and 5,000 for organizations' members, SPEC §3). A payment must come by the
method the order was created for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cardmint.client import (
    BankTransferRequired,
    Client,
    IdempotencyKeyReused,
    PaymentMismatch,
    RealNameRequired,
)
from cardmint.server.app import Running, start
from cardmint.server.domain import DomainConfig

YUAN = 100


@pytest.fixture
def shop(storage_url: str, tmp_path: Path) -> Iterator[tuple[Running, Client]]:
    running = start(
        storage_url, "127.0.0.1:0", tmp_path / "var", workers=8, config=DomainConfig(profile="cn-prepaid")
    )
    admin = Client(f"127.0.0.1:{running.port}", running.domain.auth.create_token("admin").token, timeout=30.0)
    try:
        # Registered cards (a holder on record): at most 5,000 yuan each under cn-prepaid.
        admin.create_product(
            sku="REG",
            name="registered",
            currency="CNY",
            denominations=[1000 * YUAN, 5000 * YUAN],
            registered=True,
        )
        for face, count in ((1000 * YUAN, 12), (5000 * YUAN, 24)):
            admin.stock_pool(admin.create_lot("REG", count, face).id)
        yield running, admin
    finally:
        admin.close()
        running.stop(grace=0)


def _buy(admin: Client, account: str, face: int, n: int, method: str = "online", rid: str = "") -> int:
    order = admin.create_order(
        [("REG", face, n)],
        account=account,
        payment_method=method,
        request_id=rid or f"{account}-{face}-{n}-{method}",
    )
    return order.id


def test_an_individual_needs_a_real_name_then_a_bank_transfer(shop: tuple[Running, Client]) -> None:
    _, admin = shop
    # 9,000 yuan: no rule applies.
    small = _buy(admin, "ind", 1000 * YUAN, 9)
    assert admin.confirm_payment(small, "pay-small", 9000 * YUAN, "CNY").status == 3  # delivered
    # 10,000 yuan: the real name first; nothing was reserved by the refusal.
    stock_before = admin.stock("REG")
    with pytest.raises(RealNameRequired) as refused:
        _buy(admin, "ind", 5000 * YUAN, 2)
    assert refused.value.metadata["threshold"] == str(10000 * YUAN)
    assert admin.stock("REG") == stock_before
    admin.verify_real_name("ind", request_id="kyc-ind")
    mid = _buy(admin, "ind", 5000 * YUAN, 2)
    assert admin.confirm_payment(mid, "pay-mid", 10000 * YUAN, "CNY").status == 3
    # 50,000 yuan from an individual: only by bank transfer.
    with pytest.raises(BankTransferRequired) as transfer_only:
        _buy(admin, "ind", 5000 * YUAN, 10)
    assert transfer_only.value.metadata["buyer"] == "individual"
    assert transfer_only.value.metadata["threshold"] == str(50000 * YUAN)
    big = _buy(admin, "ind", 5000 * YUAN, 10, "bank_transfer")
    assert admin.get_order(big).payment_method == 2  # PAYMENT_METHOD_BANK_TRANSFER
    # A notification of the right amount by another method is not this order's payment.
    with pytest.raises(PaymentMismatch) as wrong:
        admin.confirm_payment(big, "pay-big", 50000 * YUAN, "CNY")
    assert wrong.value.metadata["payment_method"] == "bank_transfer"
    paid = admin.confirm_payment(big, "pay-big-2", 50000 * YUAN, "CNY", payment_method="bank_transfer")
    assert paid.status == 3 and len(admin.get_order(big).codes) == 10


def test_an_organizations_member_pays_by_bank_transfer_from_5000(shop: tuple[Running, Client]) -> None:
    _, admin = shop
    admin.create_organization("acme", request_id="org-acme")
    admin.add_member("acme", "acme-buyer", role="member", request_id="m-1")
    four = _buy(admin, "acme-buyer", 1000 * YUAN, 4)  # 4,000 yuan: online is fine
    assert admin.confirm_payment(four, "pay-4", 4000 * YUAN, "CNY").status == 3
    with pytest.raises(BankTransferRequired) as refused:
        _buy(admin, "acme-buyer", 5000 * YUAN, 1)
    assert refused.value.metadata["buyer"] == "organization"
    assert refused.value.metadata["threshold"] == str(5000 * YUAN)
    one = _buy(admin, "acme-buyer", 5000 * YUAN, 1, "bank_transfer")
    assert admin.confirm_payment(one, "pay-1", 5000 * YUAN, "CNY", payment_method="bank_transfer").status == 3
    # The same items by another method is another request: a reused request id is refused.
    with pytest.raises(IdempotencyKeyReused):
        _buy(admin, "acme-buyer", 5000 * YUAN, 1, "online", rid="acme-buyer-500000-1-bank_transfer")
