"""Every method of every cardmint service in the .proto files has a real handler: no call
ever reaches the generated base class, which would answer UNIMPLEMENTED."""

from __future__ import annotations

import importlib

import pytest
from cardmint.server import api
from cardmint.server.api.accounts import AccountServicer
from cardmint.server.api.balances import BalanceServicer
from cardmint.server.api.cards import CardServicer
from cardmint.server.api.catalog import CatalogServicer
from cardmint.server.api.compliance import ComplianceServicer
from cardmint.server.api.events import EventServicer
from cardmint.server.api.keys import KeyServicer
from cardmint.server.api.lots import LotServicer
from cardmint.server.api.orders import OrderServicer

SERVICERS: dict[str, type] = {
    "cardmint.v1.KeyService": KeyServicer,
    "cardmint.v1.CatalogService": CatalogServicer,
    "cardmint.v1.LotService": LotServicer,
    "cardmint.v1.CardService": CardServicer,
    "cardmint.v1.BalanceService": BalanceServicer,
    "cardmint.v1.EventService": EventServicer,
    "cardmint.v1.ComplianceService": ComplianceServicer,
    "cardmint.v1.AccountService": AccountServicer,
    "cardmint.v1.OrderService": OrderServicer,
}


def test_the_table_names_every_served_service() -> None:
    assert set(SERVICERS) == set(api.SERVICE_NAMES)


@pytest.mark.parametrize("service", sorted(SERVICERS))
def test_every_method_is_implemented(service: str) -> None:
    servicer = SERVICERS[service]
    short = service.rsplit(".", 1)[1]
    # The generated base class, e.g. cardmint.v1.card_pb2_grpc.CardServiceServicer.
    base = next(b for b in servicer.__mro__ if b.__name__ == f"{short}Servicer")
    module = importlib.import_module(base.__module__.replace("_grpc", ""))
    methods = [m.name for m in module.DESCRIPTOR.services_by_name[short].methods]
    assert methods
    missing = [m for m in methods if getattr(servicer, m) is getattr(base, m)]
    assert missing == [], f"{service}: {missing} would answer UNIMPLEMENTED"
