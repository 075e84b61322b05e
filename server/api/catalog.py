"""CatalogService: products."""

from __future__ import annotations

import grpc
from cardmint.server.domain import Domain, Product
from cardmint.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

from ._convert import page_cursor, page_size, timestamp
from .auth import current_principal

__all__ = ["CatalogServicer", "product_message"]

MAX_PAGE = 100
_DELIVERY_IN = {
    catalog_pb2.DELIVERY_UNSPECIFIED: "auto",
    catalog_pb2.DELIVERY_AUTO: "auto",
    catalog_pb2.DELIVERY_REVIEW: "review",
}
_DELIVERY_OUT = {"auto": catalog_pb2.DELIVERY_AUTO, "review": catalog_pb2.DELIVERY_REVIEW}


def product_message(p: Product) -> catalog_pb2.Product:
    return catalog_pb2.Product(
        id=p.id,
        sku=p.sku,
        name=p.name,
        currency=p.currency,
        denominations=list(p.denominations),
        amount_range=(
            catalog_pb2.AmountRange(min_minor_units=p.amount_range[0], max_minor_units=p.amount_range[1])
            if p.amount_range
            else None
        ),
        validity_days=p.validity_days,
        delivery=_DELIVERY_OUT[str(p.delivery)],
        code_length=p.code_length,
        created_at=timestamp(p.created_at),
        registered=p.registered,
        retired_at=timestamp(p.retired_at),
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._catalog = domain.catalog

    def CreateProduct(  # noqa: N802 - grpc's generated method names
        self, request: catalog_pb2.CreateProductRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Product:
        r = request
        product = self._catalog.create_product(
            current_principal(),
            sku=r.sku,
            name=r.name,
            currency=r.currency,
            denominations=tuple(r.denominations),
            amount_range=(
                (r.amount_range.min_minor_units, r.amount_range.max_minor_units)
                if r.HasField("amount_range")
                else None
            ),
            validity_days=r.validity_days if r.HasField("validity_days") else None,
            # An enum value this server does not know passes through as a number, which
            # the domain refuses as a field violation.
            delivery=_DELIVERY_IN.get(r.delivery, str(r.delivery)),
            code_length=r.code_length or 16,
            registered=r.registered,
        )
        return product_message(product)

    def GetProduct(  # noqa: N802 - grpc's generated method names
        self, request: catalog_pb2.GetProductRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Product:
        return product_message(self._catalog.get_product(current_principal(), request.sku))

    def RetireProduct(  # noqa: N802 - grpc's generated method names
        self, request: catalog_pb2.RetireProductRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Product:
        product = self._catalog.retire_product(current_principal(), request.sku, reason=request.reason)
        return product_message(product)

    def ReinstateProduct(  # noqa: N802 - grpc's generated method names
        self, request: catalog_pb2.ReinstateProductRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.Product:
        return product_message(self._catalog.reinstate_product(current_principal(), request.sku))

    def ListProducts(  # noqa: N802 - grpc's generated method names
        self, request: catalog_pb2.ListProductsRequest, context: grpc.ServicerContext
    ) -> catalog_pb2.ListProductsResponse:
        size = page_size(request.page, MAX_PAGE)
        # One more than asked tells whether another page exists without a second query.
        found = self._catalog.list_products(
            current_principal(),
            after_id=page_cursor(request.page) or 0,
            limit=size + 1,
            on_sale_only=request.on_sale_only,
        )
        page = found[:size]
        more = len(found) > size
        return catalog_pb2.ListProductsResponse(
            products=[product_message(p) for p in page],
            page=common_pb2.PageResponse(next_page_token=str(page[-1].id) if more else ""),
        )
