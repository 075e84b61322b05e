"""ComplianceService: freeze, unfreeze, reports, loss reports."""

from __future__ import annotations

import grpc
import numpy as np
from cardmint.server.domain import Domain, InvalidArgument
from cardmint.server.domain.compliance import LossReportView
from cardmint.server.domain.issued_index import DIGEST_SIZE
from cardmint.server.storage import Report
from cardmint.v1 import card_pb2, common_pb2, compliance_pb2, compliance_pb2_grpc

from ._convert import money, page_cursor, page_size, timestamp, unpack_packed
from .auth import current_principal
from .cards import card_message

__all__ = ["ComplianceServicer"]

MAX_PAGE = 500


def report_message(r: Report) -> compliance_pb2.Report:
    return compliance_pb2.Report(
        id=r.id,
        at=timestamp(r.at),
        kind=r.kind,
        subject=r.subject,
        amount=money(r.amount, r.currency) if r.amount is not None and r.currency else None,
        detail_json=r.detail,
        profile=r.profile,
    )


_LOSS_STATUS = {
    "pending": compliance_pb2.LOSS_REPORT_STATUS_PENDING,
    "approved": compliance_pb2.LOSS_REPORT_STATUS_APPROVED,
    "rejected": compliance_pb2.LOSS_REPORT_STATUS_REJECTED,
}
_LOSS_FILTER = {number: name for name, number in _LOSS_STATUS.items()}


def loss_report_message(r: LossReportView) -> compliance_pb2.LossReport:
    return compliance_pb2.LossReport(
        id=r.id,
        status=_LOSS_STATUS[r.status],
        card=card_message(r.card),
        account=r.account,
        reason=r.reason,
        reported_by=r.reported_by,
        reported_at=timestamp(r.reported_at),
        reviewed_by=r.reviewed_by or "",
        reviewed_at=timestamp(r.reviewed_at),
        note=r.note or "",
        new_card=card_message(r.new_card) if r.new_card is not None else None,
        amount=money(r.amount, r.card.currency) if r.amount is not None else None,
        replayed=r.replayed,
    )


class ComplianceServicer(compliance_pb2_grpc.ComplianceServiceServicer):
    def __init__(self, domain: Domain) -> None:
        self._compliance = domain.compliance

    def Freeze(self, request: compliance_pb2.FreezeRequest, context: grpc.ServicerContext) -> card_pb2.Card:  # noqa: N802
        return card_message(
            self._compliance.freeze(current_principal(), request.serial, reason=request.reason)
        )

    def Unfreeze(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.UnfreezeRequest, context: grpc.ServicerContext
    ) -> card_pb2.Card:
        return card_message(
            self._compliance.unfreeze(current_principal(), request.serial, reason=request.reason)
        )

    def ImportBlacklist(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.ImportBlacklistRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.ImportBlacklistResponse:
        which = request.WhichOneof("entries")
        if which == "digests":
            raw = request.digests
            if len(raw) % DIGEST_SIZE:
                raise InvalidArgument.of("digests", f"{DIGEST_SIZE} bytes per digest, back to back")
            result = self._compliance.import_blacklist(
                current_principal(),
                source=request.source,
                digests=np.frombuffer(raw, dtype=np.uint8).reshape(-1, DIGEST_SIZE),
            )
        else:
            result = self._compliance.import_blacklist(
                current_principal(),
                source=request.source,
                codes=unpack_packed(request.codes, "codes"),
                length=request.length or 16,
            )
        return compliance_pb2.ImportBlacklistResponse(
            received=result.received,
            malformed=result.malformed,
            added=result.new,
            matched=result.matched,
            frozen=result.frozen,
        )

    def VerifyAudit(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.VerifyAuditRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.VerifyAuditResponse:
        v = self._compliance.verify_audit(
            current_principal(),
            expect_events=request.expect_events if request.HasField("expect_events") else None,
            expect_head=request.expect_head or None,
        )
        return compliance_pb2.VerifyAuditResponse(
            ok=v.ok, events=v.events, head_hash=v.head_hash, first_bad=v.first_bad or 0, problem=v.problem
        )

    def ListReports(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.ListReportsRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.ListReportsResponse:
        page = self._compliance.list_reports(
            current_principal(),
            kind=request.kind or None,
            after_id=page_cursor(request.page) or 0,
            limit=page_size(request.page, MAX_PAGE),
        )
        token = str(page.next_after_id) if page.next_after_id is not None else ""
        return compliance_pb2.ListReportsResponse(
            reports=[report_message(r) for r in page.reports],
            page=common_pb2.PageResponse(next_page_token=token),
        )

    def ReportLoss(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.ReportLossRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.LossReport:
        view = self._compliance.report_loss(
            current_principal(),
            request.serial,
            reason=request.reason,
            request_id=request.request_id,
            account=request.account or None,
        )
        return loss_report_message(view)

    def ReviewLoss(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.ReviewLossRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.LossReport:
        view = self._compliance.review_loss(
            current_principal(),
            request.report_id,
            approve=request.approve,
            note=request.note,
            request_id=request.request_id,
        )
        return loss_report_message(view)

    def ListLossReports(  # noqa: N802 - grpc's generated method names
        self, request: compliance_pb2.ListLossReportsRequest, context: grpc.ServicerContext
    ) -> compliance_pb2.ListLossReportsResponse:
        if request.status and request.status not in _LOSS_FILTER:
            raise InvalidArgument.of("status", "a LossReportStatus value")
        page = self._compliance.list_loss_reports(
            current_principal(),
            status=_LOSS_FILTER.get(request.status),
            after_id=page_cursor(request.page) or 0,
            limit=page_size(request.page, MAX_PAGE),
        )
        token = str(page.next_after_id) if page.next_after_id is not None else ""
        return compliance_pb2.ListLossReportsResponse(
            reports=[loss_report_message(r) for r in page.reports],
            page=common_pb2.PageResponse(next_page_token=token),
        )
