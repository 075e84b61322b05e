"""OrderService: the card shop (pool, orders, payment, delivery, refunds)."""

from __future__ import annotations

import grpc
from cardmint.server.domain import DeliveredCode, Domain, InvalidArgument, OrderLine, OrderStatus, OrderView
from cardmint.v1 import card_pb2, common_pb2, order_pb2, order_pb2_grpc

from ._convert import client_address, money, page_cursor, page_size, timestamp, trusted_networks
from .auth import current_principal

__all__ = ["OrderServicer", "order_message"]

MAX_PAGE = 500
_STATUS_OUT = {
    OrderStatus.RESERVED: order_pb2.ORDER_STATUS_RESERVED,
    OrderStatus.REVIEW: order_pb2.ORDER_STATUS_REVIEW,
    OrderStatus.DELIVERED: order_pb2.ORDER_STATUS_DELIVERED,
    OrderStatus.CANCELLED: order_pb2.ORDER_STATUS_CANCELLED,
    OrderStatus.EXPIRED: order_pb2.ORDER_STATUS_EXPIRED,
    OrderStatus.REFUNDED: order_pb2.ORDER_STATUS_REFUNDED,
}
_STATUS_IN = {number: status for status, number in _STATUS_OUT.items()}
_CARD_STATUS = {
    "active": card_pb2.CARD_STATUS_ACTIVE,
    "frozen": card_pb2.CARD_STATUS_FROZEN,
    "void": card_pb2.CARD_STATUS_VOID,
    "expired": card_pb2.CARD_STATUS_EXPIRED,
}


def _code(c: DeliveredCode) -> order_pb2.DeliveredCode:
    return order_pb2.DeliveredCode(
        serial=c.serial,
        code=c.code,
        revealed=c.revealed,
        face_value=money(c.face_value, c.currency),
        status=_CARD_STATUS[c.status],
        expires_at=timestamp(c.expires_at),
    )


def order_message(o: OrderView) -> order_pb2.Order:
    return order_pb2.Order(
        id=o.id,
        account=o.account,
        status=_STATUS_OUT[o.status],
        items=[
            order_pb2.OrderItem(sku=i.sku, face_value_minor_units=i.face_value, quantity=i.quantity)
            for i in o.items
        ],
        total=money(o.amount, o.currency),
        created_at=timestamp(o.created_at),
        expires_at=timestamp(o.expires_at),
        payment_id=o.payment_id or "",
        paid=money(o.paid_amount, o.currency) if o.paid_amount is not None else None,
        paid_at=timestamp(o.paid_at),
        deliver_by=timestamp(o.deliver_by),
        delivered_at=timestamp(o.delivered_at),
        closed_at=timestamp(o.closed_at),
        close_reason=o.close_reason or "",
        codes=[_code(c) for c in o.codes],
        replayed=o.replayed,
        payment_method=_METHOD_OUT[o.payment_method],
    )


_METHOD_IN = {
    order_pb2.PAYMENT_METHOD_UNSPECIFIED: "online",
    order_pb2.PAYMENT_METHOD_ONLINE: "online",
    order_pb2.PAYMENT_METHOD_BANK_TRANSFER: "bank_transfer",
}
_METHOD_OUT = {
    "online": order_pb2.PAYMENT_METHOD_ONLINE,
    "bank_transfer": order_pb2.PAYMENT_METHOD_BANK_TRANSFER,
}


def _method(value: order_pb2.PaymentMethod.ValueType, field: str) -> str:
    if value not in _METHOD_IN:  # a number the .proto does not know (sent by a newer client)
        raise InvalidArgument.of(field, "not a payment method")
    return _METHOD_IN[value]


class OrderServicer(order_pb2_grpc.OrderServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._orders = domain.orders
        self._trusted = trusted_networks(domain.config.trusted_proxies)

    def StockPool(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.StockPoolRequest, context: grpc.ServicerContext
    ) -> order_pb2.StockPoolResponse:
        r = self._orders.stock_pool(current_principal(), request.lot_id)
        return order_pb2.StockPoolResponse(
            lot_id=r.lot_id, sku=r.sku, stocked=r.stocked, already_stocked=r.already
        )

    def GetStock(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.GetStockRequest, context: grpc.ServicerContext
    ) -> order_pb2.GetStockResponse:
        stock = self._orders.stock(current_principal(), request.sku)
        return order_pb2.GetStockResponse(
            sku=stock.sku,
            stock=[
                order_pb2.PoolStock(
                    face_value=money(s.face_value, s.currency),
                    available=s.available,
                    reserved=s.reserved,
                    sold=s.sold,
                    returned=s.returned,
                    withdrawn=s.withdrawn,
                )
                for s in stock.pools
            ],
            retired_at=timestamp(stock.retired_at),
        )

    def CreateOrder(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.CreateOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        view = self._orders.create_order(
            current_principal(),
            [OrderLine(i.sku, i.face_value_minor_units, i.quantity) for i in request.items],
            request_id=request.request_id,
            account=request.account or None,
            peer=client_address(context, self._trusted) or "",
            client_address=request.client_address or None,
            payment_method=_method(request.payment_method, "payment_method"),
        )
        return order_message(view)

    def ConfirmPayment(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.ConfirmPaymentRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        view = self._orders.confirm_payment(
            current_principal(),
            request.order_id,
            payment_id=request.payment_id,
            amount=request.amount.minor_units,
            currency=request.amount.currency,
            payment_method=_method(request.payment_method, "payment_method"),
        )
        return order_message(view)

    def GetOrder(self, request: order_pb2.GetOrderRequest, context: grpc.ServicerContext) -> order_pb2.Order:  # noqa: N802
        return order_message(
            self._orders.get_order(current_principal(), request.order_id, reveal=request.reveal_codes)
        )

    def ListOrders(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.ListOrdersRequest, context: grpc.ServicerContext
    ) -> order_pb2.ListOrdersResponse:
        # An unknown status (a newer client's, or garbage) must not quietly mean "all".
        if request.status and request.status not in _STATUS_IN:
            raise InvalidArgument.of("status", "an OrderStatus value")
        page = self._orders.list_orders(
            current_principal(),
            account=request.account or None,
            status=_STATUS_IN.get(request.status),
            before_id=page_cursor(request.page),
            limit=page_size(request.page, MAX_PAGE),
        )
        token = "" if page.next_before_id is None else str(page.next_before_id)
        return order_pb2.ListOrdersResponse(
            orders=[order_message(o) for o in page.items], page=common_pb2.PageResponse(next_page_token=token)
        )

    def CancelOrder(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.CancelOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        return order_message(self._orders.cancel_order(current_principal(), request.order_id))

    def ReviewOrder(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.ReviewOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        view = self._orders.review_order(
            current_principal(), request.order_id, approve=request.approve, reason=request.reason
        )
        return order_message(view)

    def RefundOrder(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.RefundOrderRequest, context: grpc.ServicerContext
    ) -> order_pb2.Order:
        return order_message(
            self._orders.refund_order(current_principal(), request.order_id, reason=request.reason)
        )

    def ExpireReservations(  # noqa: N802 - grpc's generated method names
        self, request: order_pb2.ExpireReservationsRequest, context: grpc.ServicerContext
    ) -> order_pb2.ExpireReservationsResponse:
        result = self._orders.expire_reservations(current_principal())
        return order_pb2.ExpireReservationsResponse(expired=result.expired, refunded=result.refunded)
