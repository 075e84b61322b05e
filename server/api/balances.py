"""BalanceService: balances, redeem, reverse, history."""

from __future__ import annotations

import grpc
from cardmint.server.domain import Domain, MoneyReceipt, Transaction, TransferReceipt
from cardmint.server.storage import LedgerKind
from cardmint.v1 import balance_pb2, balance_pb2_grpc, common_pb2

from ._convert import money, page_cursor, page_size, timestamp
from .auth import current_principal

__all__ = ["BalanceServicer"]

MAX_PAGE = 500
_KIND = {
    LedgerKind.REDEEM: balance_pb2.TRANSACTION_KIND_REDEEM,
    LedgerKind.REVERSE: balance_pb2.TRANSACTION_KIND_REVERSE,
    LedgerKind.BIND: balance_pb2.TRANSACTION_KIND_BIND,
    LedgerKind.BIND_TRANSFER: balance_pb2.TRANSACTION_KIND_BIND_TRANSFER,
    LedgerKind.UNBIND: balance_pb2.TRANSACTION_KIND_UNBIND,
    LedgerKind.FREEZE: balance_pb2.TRANSACTION_KIND_FREEZE,
    LedgerKind.UNFREEZE: balance_pb2.TRANSACTION_KIND_UNFREEZE,
    LedgerKind.VOID: balance_pb2.TRANSACTION_KIND_VOID,
    LedgerKind.REFUND: balance_pb2.TRANSACTION_KIND_REFUND,
    LedgerKind.REISSUE_OUT: balance_pb2.TRANSACTION_KIND_REISSUE_OUT,
    LedgerKind.REISSUE_IN: balance_pb2.TRANSACTION_KIND_REISSUE_IN,
    LedgerKind.TRANSFER_OUT: balance_pb2.TRANSACTION_KIND_TRANSFER_OUT,
    LedgerKind.TRANSFER_IN: balance_pb2.TRANSACTION_KIND_TRANSFER_IN,
}


def receipt_message(r: MoneyReceipt) -> balance_pb2.MoneyReceipt:
    return balance_pb2.MoneyReceipt(
        transaction_id=r.entry_id,
        serial=r.serial,
        amount=money(r.amount, r.currency),
        balance_after=money(r.balance_after, r.currency),
        replayed=r.replayed,
    )


def transfer_message(r: TransferReceipt) -> balance_pb2.TransferReceipt:
    return balance_pb2.TransferReceipt(
        out_transaction_id=r.out_entry_id,
        in_transaction_id=r.in_entry_id,
        from_serial=r.from_serial,
        to_serial=r.to_serial,
        amount=money(r.amount, r.currency),
        from_balance_after=money(r.from_balance_after, r.currency),
        to_balance_after=money(r.to_balance_after, r.currency),
        replayed=r.replayed,
    )


def transaction_message(t: Transaction) -> balance_pb2.Transaction:
    return balance_pb2.Transaction(
        id=t.id,
        kind=_KIND[LedgerKind(t.kind)],
        amount=money(t.amount, t.currency),
        balance_after_minor_units=t.balance_after,
        serial=t.serial or "",
        request_id=t.request_id or "",
        reverses_id=t.reverses_id or 0,
        created_at=timestamp(t.created_at),
    )


class BalanceServicer(balance_pb2_grpc.BalanceServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._balances = domain.balances

    def GetBalance(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.GetBalanceRequest, context: grpc.ServicerContext
    ) -> balance_pb2.GetBalanceResponse:
        principal = current_principal()
        asked = request.HasField("required")
        amount = request.required.minor_units if asked else None
        if request.WhichOneof("subject") == "serial":
            card = self._balances.card_balance(principal, request.serial, amount=amount)
            return balance_pb2.GetBalanceResponse(
                balances=[money(card.balance.amount, card.balance.currency)], sufficient=card.sufficient
            )
        account = self._balances.account_balance(
            principal,
            request.account or None,
            amount=amount,
            currency=request.required.currency if asked else None,
        )
        return balance_pb2.GetBalanceResponse(
            balances=[money(m.amount, m.currency) for m in account.balances], sufficient=account.sufficient
        )

    def Redeem(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.RedeemRequest, context: grpc.ServicerContext
    ) -> balance_pb2.MoneyReceipt:
        receipt = self._balances.redeem(
            current_principal(),
            serial=request.serial,
            amount=request.amount.minor_units,
            currency=request.amount.currency,
            request_id=request.request_id,
        )
        return receipt_message(receipt)

    def Reverse(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.ReverseRequest, context: grpc.ServicerContext
    ) -> balance_pb2.MoneyReceipt:
        receipt = self._balances.reverse(
            current_principal(),
            entry_id=request.redeem_transaction_id,
            amount=request.amount_minor_units,
            request_id=request.request_id,
        )
        return receipt_message(receipt)

    def Transfer(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.TransferRequest, context: grpc.ServicerContext
    ) -> balance_pb2.TransferReceipt:
        receipt = self._balances.transfer(
            current_principal(),
            from_serial=request.from_serial,
            to_serial=request.to_serial,
            amount=request.amount.minor_units,
            currency=request.amount.currency,
            request_id=request.request_id,
        )
        return transfer_message(receipt)

    def Reconcile(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.ReconcileRequest, context: grpc.ServicerContext
    ) -> balance_pb2.ReconcileResponse:
        got = self._balances.reconcile(current_principal(), list(request.serials))
        return balance_pb2.ReconcileResponse(
            cards=[
                balance_pb2.CardReconciliation(
                    serial=c.serial,
                    balance=money(c.balance, c.currency),
                    face_value=money(c.face_value, c.currency),
                    ledger_total_minor_units=c.ledger_total,
                    redeemed_net_minor_units=c.redeemed_net,
                    consistent=c.consistent,
                )
                for c in got.cards
            ],
            at=timestamp(got.at),
        )

    def ListTransactions(  # noqa: N802 - grpc's generated method names
        self, request: balance_pb2.ListTransactionsRequest, context: grpc.ServicerContext
    ) -> balance_pb2.ListTransactionsResponse:
        subject = request.WhichOneof("subject")
        page = self._balances.list_transactions(
            current_principal(),
            serial=request.serial if subject == "serial" else None,
            account=(request.account or None) if subject == "account" else None,
            before_id=page_cursor(request.page),
            limit=page_size(request.page, MAX_PAGE),
        )
        token = "" if page.next_before_id is None else str(page.next_before_id)
        return balance_pb2.ListTransactionsResponse(
            transactions=[transaction_message(t) for t in page.items],
            page=common_pb2.PageResponse(next_page_token=token),
        )
