"""cardmint.server.api: the gRPC servicers (proto <-> domain), interceptors and wiring.

Servicers only translate between proto messages and the domain's values and make one
domain call each; the domain checks roles and rules. ``ObserveInterceptor`` gives each call
a request id, an access-log line and its metrics, ``ErrorInterceptor`` maps domain errors to
statuses, ``AuthInterceptor`` resolves the caller. ``cardmint.server.app`` builds
the process around them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from cardmint.server.domain import Domain
from cardmint.server.observe import RpcMetrics
from cardmint.v1 import (
    account_pb2,
    account_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    card_pb2,
    card_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    compliance_pb2,
    compliance_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    lot_pb2,
    lot_pb2_grpc,
    order_pb2,
    order_pb2_grpc,
)

from .accounts import AccountServicer
from .admission import AdmissionInterceptor
from .auth import OPEN_SERVICES, AuthInterceptor, current_principal
from .balances import BalanceServicer
from .cards import CardServicer
from .catalog import CatalogServicer
from .chain import Chain
from .compliance import ComplianceServicer
from .errors import ErrorInterceptor, status_of
from .events import EventServicer
from .keys import KeyServicer
from .lots import LotServicer
from .observe import ObserveInterceptor, PrincipalTap
from .orders import OrderServicer

__all__ = [
    "OPEN_SERVICES",
    "SERVICE_NAMES",
    "AdmissionInterceptor",
    "AuthInterceptor",
    "Chain",
    "ErrorInterceptor",
    "ObserveInterceptor",
    "PrincipalTap",
    "add_services",
    "current_principal",
    "interceptors",
    "status_of",
]

# Full names of the cardmint services, for reflection and health.
SERVICE_NAMES: tuple[str, ...] = tuple(
    module.DESCRIPTOR.services_by_name[name].full_name
    for module, name in (
        (keys_pb2, "KeyService"),
        (catalog_pb2, "CatalogService"),
        (lot_pb2, "LotService"),
        (card_pb2, "CardService"),
        (balance_pb2, "BalanceService"),
        (event_pb2, "EventService"),
        (compliance_pb2, "ComplianceService"),
        (account_pb2, "AccountService"),
        (order_pb2, "OrderService"),
    )
)


def interceptors(
    domain: Domain,
    metrics: RpcMetrics | None = None,
    tracer: Any = None,
    admission: AdmissionInterceptor | None = None,
    on_storage_failure: Callable[[], None] | None = None,
) -> list[grpc.ServerInterceptor]:  # type: ignore[type-arg]
    """Observation outermost (it sees every call's final status, errors included), then
    error mapping, so a refused token is answered like every other error, then admission
    control (when given: an overloaded server refuses before looking at the token), then
    authentication, then the tap that tells the access log who called."""
    chain: list[grpc.ServerInterceptor] = [  # type: ignore[type-arg]
        ObserveInterceptor(metrics, tracer),
        ErrorInterceptor(on_storage_failure),
    ]
    if admission is not None:
        chain.append(admission)
    chain += [AuthInterceptor(domain.auth.authenticate), PrincipalTap(current_principal)]
    # One interceptor for grpc: each method's handler through the five is built once (Chain).
    return [Chain(chain, admission)]


def add_services(server: grpc.Server, domain: Domain) -> None:
    keys_pb2_grpc.add_KeyServiceServicer_to_server(KeyServicer(domain), server)
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(CatalogServicer(domain), server)
    lot_pb2_grpc.add_LotServiceServicer_to_server(LotServicer(domain), server)
    card_pb2_grpc.add_CardServiceServicer_to_server(CardServicer(domain), server)
    balance_pb2_grpc.add_BalanceServiceServicer_to_server(BalanceServicer(domain), server)
    event_pb2_grpc.add_EventServiceServicer_to_server(EventServicer(domain), server)
    compliance_pb2_grpc.add_ComplianceServiceServicer_to_server(ComplianceServicer(domain), server)
    account_pb2_grpc.add_AccountServiceServicer_to_server(AccountServicer(domain), server)
    order_pb2_grpc.add_OrderServiceServicer_to_server(OrderServicer(domain), server)
