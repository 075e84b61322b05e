"""AccountService: tokens, organizations and their members, account facts, bulk binds."""

from __future__ import annotations

import grpc
from cardmint.server.domain import Domain
from cardmint.server.domain.accounts import AccountFacts, BulkBindRow
from cardmint.server.domain.errors import InvalidArgument
from cardmint.server.storage import Department, Membership
from cardmint.v1 import account_pb2, account_pb2_grpc, common_pb2

from ._convert import pack, page_cursor, page_size, timestamp, unpack
from .auth import current_principal

__all__ = ["AccountServicer"]

MAX_PAGE = 500
_OK, _ERROR = account_pb2.BULK_BIND_STATUS_OK, account_pb2.BULK_BIND_STATUS_ERROR


def member_message(m: Membership) -> account_pb2.Member:
    return account_pb2.Member(
        account=m.account,
        organization=m.organization,
        department=m.department or "",
        role=m.role.value,
        added_at=timestamp(m.added_at),
    )


def _department(d: Department, organization: str) -> account_pb2.Department:
    return account_pb2.Department(
        id=d.id, organization=organization, name=d.name, created_at=timestamp(d.created_at)
    )


def _facts(f: AccountFacts) -> account_pb2.AccountFacts:
    return account_pb2.AccountFacts(
        account=f.account,
        kind=f.kind.value,
        real_name_verified_at=timestamp(f.real_name_verified_at),
        member=member_message(f.membership) if f.membership is not None else None,
    )


def _text(items: list[bytes], field: str) -> list[str]:
    try:
        return [b.decode("utf-8") for b in items]
    except UnicodeDecodeError:
        raise InvalidArgument.of(field, "not UTF-8") from None


class AccountServicer(account_pb2_grpc.AccountServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._auth = domain.auth
        self._accounts = domain.accounts

    def CreateToken(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.CreateTokenRequest, context: grpc.ServicerContext
    ) -> account_pb2.CreateTokenResponse:
        issued = self._auth.issue_token(
            current_principal(),
            request.role,
            label=request.label,
            account=request.account or None,
            expires_in=request.expires_in_seconds or None,
        )
        return account_pb2.CreateTokenResponse(
            token=issued.token, id=issued.token_id, expires_at=timestamp(issued.expires_at)
        )

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
                    expires_at=timestamp(t.expires_at),
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

    def CreateOrganization(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.CreateOrganizationRequest, context: grpc.ServicerContext
    ) -> account_pb2.Organization:
        org = self._accounts.create_organization(
            current_principal(), request.name, request_id=request.request_id
        )
        return account_pb2.Organization(id=org.id, name=org.name, created_at=timestamp(org.created_at))

    def CreateDepartment(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.CreateDepartmentRequest, context: grpc.ServicerContext
    ) -> account_pb2.Department:
        dept = self._accounts.create_department(
            current_principal(), request.organization, request.name, request_id=request.request_id
        )
        return _department(dept, request.organization)

    def ListDepartments(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.ListDepartmentsRequest, context: grpc.ServicerContext
    ) -> account_pb2.ListDepartmentsResponse:
        found = self._accounts.departments(current_principal(), request.organization)
        return account_pb2.ListDepartmentsResponse(
            departments=[_department(d, request.organization) for d in found]
        )

    def AddMember(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.AddMemberRequest, context: grpc.ServicerContext
    ) -> account_pb2.AddMemberResponse:
        view = self._accounts.add_member(
            current_principal(),
            request.organization,
            request.account,
            role=request.role or "member",
            department=request.department or None,
            request_id=request.request_id,
            with_token=request.with_token,
            label=request.token_label,
            token_expires_in=request.token_expires_in_seconds or None,
        )
        return account_pb2.AddMemberResponse(
            member=member_message(view.membership),
            token=view.token or "",
            token_id=view.token_id or 0,
            replayed=view.replayed,
            token_expires_at=timestamp(view.token_expires_at),
        )

    def RemoveMember(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.RemoveMemberRequest, context: grpc.ServicerContext
    ) -> account_pb2.RemoveMemberResponse:
        self._accounts.remove_member(
            current_principal(), request.organization, request.account, request_id=request.request_id
        )
        return account_pb2.RemoveMemberResponse()

    def ListMembers(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.ListMembersRequest, context: grpc.ServicerContext
    ) -> account_pb2.ListMembersResponse:
        page = self._accounts.list_members(
            current_principal(),
            request.organization,
            department=request.department or None,
            after_account_id=page_cursor(request.page) or 0,
            limit=page_size(request.page, MAX_PAGE),
        )
        return account_pb2.ListMembersResponse(
            members=[member_message(m) for m in page.members],
            page=common_pb2.PageResponse(
                next_page_token=str(page.next_after) if page.next_after is not None else ""
            ),
        )

    def VerifyRealName(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.VerifyRealNameRequest, context: grpc.ServicerContext
    ) -> account_pb2.AccountFacts:
        return _facts(
            self._accounts.verify_real_name(
                current_principal(), request.account, request_id=request.request_id
            )
        )

    def GetAccount(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.GetAccountRequest, context: grpc.ServicerContext
    ) -> account_pb2.AccountFacts:
        return _facts(self._accounts.account_facts(current_principal(), request.account or None))

    def BulkBind(  # noqa: N802 - grpc's generated method names
        self, request: account_pb2.BulkBindRequest, context: grpc.ServicerContext
    ) -> account_pb2.BulkBindResponse:
        cards = _text(unpack(request.cards, "cards"), "cards")
        recipients = _text(unpack(request.recipients, "recipients"), "recipients")
        if len(cards) != len(recipients):
            raise InvalidArgument.of("recipients", "one recipient per card")
        results, replayed = self._accounts.bulk_bind(
            current_principal(),
            request.organization,
            [BulkBindRow(c, r) for c, r in zip(cards, recipients, strict=True)],
            request_id=request.request_id,
        )
        return account_pb2.BulkBindResponse(
            status=bytes(_OK if r.ok else _ERROR for r in results),
            reasons=pack([r.reason for r in results]),
            serials=pack([r.serial for r in results]),
            accounts=pack([r.account for r in results]),
            replayed=replayed,
        )
