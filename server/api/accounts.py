"""AccountService: token management."""

from __future__ import annotations

import grpc
from cardmint.server.domain import Domain
from cardmint.v1 import account_pb2, account_pb2_grpc, common_pb2

from ._convert import page_cursor, page_size, timestamp
from .auth import current_principal

__all__ = ["AccountServicer"]

MAX_PAGE = 500


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._auth = domain.auth

    def CreateToken(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> account_pb2.CreateTokenResponse:
        issued = self._auth.issue_token(
            current_principal(), request.role, label=request.label, account=request.account or None
        )
        return account_pb2.CreateTokenResponse(token=issued.token, id=issued.token_id)

    def ListTokens(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.ListTokensRequest, context: grpc.ServicerContext
    ) -> account_pb2.ListTokensResponse:
        size = page_size(request.page, MAX_PAGE)
        rows = self._auth.list_tokens(
            current_principal(), after_id=page_cursor(request.page) or 0, limit=size + 1
        )
        page, more = rows[:size], len(rows) > size
        return account_pb2.ListTokensResponse(
            tokens=[
                account_pb2.TokenInfo(
                    id=t.id,
                    role=t.role.value,
                    label=t.label,
                    account=t.account or "",
                    created_at=timestamp(t.created_at),
                    revoked_at=timestamp(t.revoked_at),
                )
                for t in page
            ],
            page=common_pb2.PageResponse(next_page_token=str(page[-1].id) if more and page else ""),
        )

    def RevokeToken(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.RevokeTokenRequest, context: grpc.ServicerContext
    ) -> account_pb2.RevokeTokenResponse:
        self._auth.revoke_token(current_principal(), request.id)
        return account_pb2.RevokeTokenResponse()
