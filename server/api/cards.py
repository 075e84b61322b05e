"""CardService: bind, unbind, view."""

from __future__ import annotations

import grpc
from cardmint.server.domain import CardView, Domain
from cardmint.v1 import card_pb2, card_pb2_grpc

from ._convert import client_origin, money, timestamp, trusted_networks
from .auth import current_principal

__all__ = ["CardServicer", "card_message"]

_STATUS = {
    "active": card_pb2.CARD_STATUS_ACTIVE,
    "frozen": card_pb2.CARD_STATUS_FROZEN,
    "void": card_pb2.CARD_STATUS_VOID,
    "expired": card_pb2.CARD_STATUS_EXPIRED,
}


def card_message(card: CardView) -> card_pb2.Card:
    return card_pb2.Card(
        serial=card.serial,
        masked_code=card.masked_code,
        status=_STATUS[card.status],
        face_value=money(card.face_value, card.currency),
        balance=money(card.balance, card.currency),
        expires_at=timestamp(card.expires_at),
        bound=card.bound,
        bound_at=timestamp(card.bound_at),
    )


class CardServicer(card_pb2_grpc.CardServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._cards = domain.cards
        self._trusted = trusted_networks(domain.config.trusted_proxies)

    def BindCard(  # noqa: N802 - grpc's generated method names
        self, request: card_pb2.BindCardRequest, context: grpc.ServicerContext
    ) -> card_pb2.BindCardResponse:
        receipt = self._cards.bind(
            current_principal(),
            request.code,
            serial=request.serial or None,
            account=request.account or None,
            origin=client_origin(context, self._trusted),
        )
        return card_pb2.BindCardResponse(
            card=card_message(receipt.card),
            already_bound_here=receipt.already_bound_here,
            transferred=receipt.transferred,
        )

    def UnbindCard(self, request: card_pb2.UnbindCardRequest, context: grpc.ServicerContext) -> card_pb2.Card:  # noqa: N802
        view = self._cards.unbind(current_principal(), request.serial, account=request.account or None)
        return card_message(view)

    def GetCard(self, request: card_pb2.GetCardRequest, context: grpc.ServicerContext) -> card_pb2.Card:  # noqa: N802
        return card_message(self._cards.get_card(current_principal(), request.serial))

    def ViewSecret(  # noqa: N802 - grpc's generated method names
        self, request: card_pb2.ViewSecretRequest, context: grpc.ServicerContext
    ) -> card_pb2.SecretView:
        view = self._cards.view_secret(
            current_principal(),
            request.serial,
            step_up=request.step_up,
            origin=client_origin(context, self._trusted),
        )
        return card_pb2.SecretView(serial=view.serial, code=view.code, masked=view.masked)
